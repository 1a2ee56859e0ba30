"""What the simulated fleet over gRPC reports: how each device ended, why, and what a slow aggregator cost."""

from __future__ import annotations

import grpc
import pytest

from fedfleet.api.manifest import parse_job
from fedfleet.device.agent import AgentStats
from fedfleet.device.client import AggregatorError, AggregatorUnreachable
from fedfleet.sim.network_fleet import (
    MIN_GIVE_UP_SECONDS,
    DeviceEnd,
    FleetReport,
    device_end,
    give_up_seconds,
    render_failures,
    render_report,
)

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata: {name: fleet}
spec:
  rounds: 1
  cohort: {clientsPerRound: 2, roundDeadlineSeconds: 600}
  simulation: {devices: 4, dataset: digits, testSamples: 0}
"""
SILENT = AggregatorError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


@pytest.mark.parametrize(
    ("outcome", "end"),
    [
        (AgentStats(done=True), DeviceEnd.DONE),
        (AgentStats(done=False), DeviceEnd.STOPPED),
        (AggregatorUnreachable("agg:1", 130.0, 120.0, SILENT), DeviceEnd.GAVE_UP),
        (AggregatorError(grpc.StatusCode.UNAUTHENTICATED, "bad signature"), DeviceEnd.REFUSED),
        (AggregatorError(grpc.StatusCode.PERMISSION_DENIED, "another job"), DeviceEnd.REFUSED),
        (SILENT, DeviceEnd.FAILED),  # a call that ran out of time ends no device by itself; if it did, it is a bug
        (ValueError("the layout has 3 tensors, the model 4"), DeviceEnd.FAILED),
    ],
    ids=["done", "stopped", "gave up", "unauthenticated", "permission denied", "deadline", "bug"],
)
def test_each_device_ends_one_way(outcome: AgentStats | BaseException, end: DeviceEnd) -> None:
    assert device_end(outcome) is end


def test_the_give_up_bound_grows_with_the_round_deadline_at_the_time_scale() -> None:
    spec = parse_job(JOB).spec
    assert give_up_seconds(spec, time_scale=0.02) == MIN_GIVE_UP_SECONDS  # 12 s rounds: the floor
    assert give_up_seconds(spec, time_scale=1.0) == 1200.0  # two 600 s deadlines


def test_the_report_says_what_the_slowness_cost_and_how_devices_that_did_not_finish_ended() -> None:
    report = FleetReport(devices=5, completed=2, give_up_after=120.0, wall_seconds=3.25)
    report.ends.update({DeviceEnd.DONE: 2, DeviceEnd.GAVE_UP: 2, DeviceEnd.FAILED: 1})
    report.retried.update({"DEADLINE_EXCEEDED": 7, "UNAVAILABLE": 2})
    report.first_error[DeviceEnd.GAVE_UP] = "dev-00003: AggregatorUnreachable: ... while waiting for a task for round 2"
    report.first_error[DeviceEnd.FAILED] = "dev-00004: ValueError: bad data while training for round 1"
    line = render_report(report)
    assert line.startswith("2/5 devices finished in 3.2s: ")
    assert line.endswith("; calls tried again after 7 DEADLINE_EXCEEDED, 2 UNAVAILABLE")
    assert render_failures(report) == [
        "2 of 5 devices gave up on an aggregator that did not answer for 120s "
        "(first: dev-00003: AggregatorUnreachable: ... while waiting for a task for round 2)",
        "1 of 5 devices failed (first: dev-00004: ValueError: bad data while training for round 1)",
    ]


def test_a_fleet_where_every_device_finished_has_no_failures_to_report() -> None:
    report = FleetReport(devices=3, completed=3)
    report.ends[DeviceEnd.DONE] = 3
    assert render_failures(report) == []
    assert "tried again" not in render_report(report)

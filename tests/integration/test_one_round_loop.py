"""One manifest through both transports of the round loop — in process in simulated time, and over real gRPC
with TLS on the wall clock — gives the same rounds: the same outcome counts per round, and, when every
report that arrives is used, the same model.

Both transports make a device's choices (drop out, how long it takes, its training shuffle) from the same
keyed streams, and the round loop decides from what a server can see what happens to the invitees that did
not report. The deadline is generous, so no report misses it on a loaded machine either; what remains of
timing (which reports arrive first) changes who is aggregated, never how many.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from grpc_support import fleet_settings, loopback_aggregator_config
from prometheus_client import CollectorRegistry

from busy_machine import MachineSpeed
from fedfleet.aggregator.app import AggregatorApp, prepare_security
from fedfleet.api.manifest import parse_job
from fedfleet.engine.records import RoundRecord
from fedfleet.runtime.local import LocalRuntime
from fedfleet.sim.network_fleet import run_fleet
from fedfleet.sim.task import build_task

DEVICES = 16

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: one-loop
spec:
  rounds: 3
  seed: 11
  model: {{architecture: logistic}}
  training: {{localEpochs: 1, batchSize: 20, learningRate: 0.1}}
  cohort: {{clientsPerRound: 6, overSelection: {over}, minReports: 2, roundDeadlineSeconds: 300}}
  evaluation: {{serverEvery: 1}}
  simulation:
    devices: {devices}
    dataset: digits
    testSamples: 200
    dropoutProbability: 0.3
    compute: {{medianSamplesPerSecond: 50, networkSeconds: 1}}
"""

COUNTS = ("participants", "surplus", "late", "dropped", "rejected")


def counts(records: list[RoundRecord]) -> list[dict[str, int]]:
    return [{"invited": r.invited, **{name: getattr(r, name) for name in COUNTS}} for r in records]


def run_both(tmp_path: Path, over_selection: float, speed: MachineSpeed) -> tuple[LocalRuntime, AggregatorApp]:
    job = parse_job(JOB.format(over=over_selection, devices=DEVICES))
    task = build_task(job.spec)
    inprocess = LocalRuntime(job, tmp_path / "inprocess", task=task)
    inprocess.prepare(resume=False)
    inprocess.run()

    # Every device must be a candidate before a round starts, as in process, where all are available.
    config = loopback_aggregator_config("one-loop", tmp_path / "grpc", speed, min_devices=DEVICES, settle_seconds=30.0)
    security = prepare_security(config, job)
    app = AggregatorApp(job, config, security, inputs=task.aggregator_inputs(), registry=CollectorRegistry())

    async def scenario() -> None:
        await app.start()
        stop = asyncio.Event()
        fleet = asyncio.create_task(
            run_fleet(job, fleet_settings(app, security, speed.seconds(60.0)), task=task, stop=stop)
        )
        try:
            assert await app.run()
            await app.linger()
        finally:
            stop.set()
            await app.stop()
        report = await fleet
        assert report.errors == [], report.errors[:3]

    asyncio.run(scenario())
    return inprocess, app


def test_both_transports_count_every_round_the_same(tmp_path: Path, machine_speed: MachineSpeed) -> None:
    inprocess, app = run_both(tmp_path, 1.5, machine_speed)
    local, remote = counts(inprocess.records), counts(app.records)
    assert local == remote
    # The job really exercised the outcomes: spares left over when rounds filled, devices lost to dropout.
    assert sum(c["surplus"] for c in local) > 0 and sum(c["dropped"] for c in local) > 0
    # Churn is what dropout took from the rounds, not over-selection's spares.
    for server in (inprocess.server, app.server):
        outcomes = server.totals.outcomes
        waited_for = sum(outcomes.values()) - outcomes["surplus"]
        assert server.totals.churn_rate == (outcomes["dropped"] + outcomes["late"]) / waited_for


def test_both_transports_reach_the_same_model_when_every_report_is_used(
    tmp_path: Path, machine_speed: MachineSpeed
) -> None:
    inprocess, app = run_both(tmp_path, 1.0, machine_speed)
    assert counts(inprocess.records) == counts(app.records)
    assert sum(r.dropped for r in inprocess.records) > 0
    # The same updates, summed in arrival order over gRPC: equal up to float32 rounding.
    np.testing.assert_allclose(app.server.weights, inprocess.server.weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        [r.accuracy or 0.0 for r in app.records], [r.accuracy or 0.0 for r in inprocess.records], atol=0.01
    )

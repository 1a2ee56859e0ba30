"""End to end over real gRPC with TLS on 127.0.0.1: an aggregator and 50 simulated devices complete a job,
reach the accuracy of the in-process runtime on the same manifest, and /metrics tells the truth about it."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from grpc_support import fleet_settings, loopback_aggregator_config, tail_accuracy
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from busy_machine import IDLE_MACHINE, MachineSpeed
from fedfleet.aggregator.app import AggregatorApp, prepare_security
from fedfleet.api.manifest import parse_job
from fedfleet.runtime.local import LocalRuntime
from fedfleet.security.tokens import new_key
from fedfleet.sim.network_fleet import FleetReport, run_fleet
from fedfleet.sim.task import build_task

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: e2e-grpc
spec:
  rounds: 12
  seed: 5
  model: {architecture: 2nn}
  training: {localEpochs: 2, batchSize: 10, learningRate: 0.05}
  cohort: {clientsPerRound: 10, overSelection: 1.2, minReports: 8, roundDeadlineSeconds: 30}
  evaluation: {serverEvery: 1, federatedEvery: 6, federatedClients: 5}
  simulation:
    devices: 50
    dataset: mnist5k
    testSamples: 500
    holdoutFraction: 0.1
    dropoutProbability: 0.1
"""


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


@pytest.mark.slow
def test_fifty_devices_over_grpc_match_the_inprocess_run_and_metrics_tell_the_truth(
    tmp_path: Path, machine_speed: MachineSpeed
) -> None:
    job = parse_job(JOB)
    task = build_task(job.spec)
    inprocess = LocalRuntime(job, tmp_path / "inprocess", task=task)
    inprocess.prepare(resume=False)
    reference = tail_accuracy([r.accuracy for r in inprocess.run()])

    state = tmp_path / "grpc"
    config = loopback_aggregator_config("e2e-grpc", state, machine_speed)
    security = prepare_security(config, job)
    app = AggregatorApp(job, config, security, inputs=task.aggregator_inputs(), registry=CollectorRegistry())
    mid_run: dict[str, object] = {}

    async def scenario() -> FleetReport:
        await app.start()
        assert app.http_port is not None
        port = app.http_port
        settings = fleet_settings(app, security, machine_speed.seconds(20.0))
        fleet = asyncio.create_task(run_fleet(job, settings, task=task))

        probes: list[asyncio.Task[tuple[int, str]]] = []

        def on_round(record: object) -> None:
            if not probes:  # after the first round, while the job runs (from a thread: the loop serves HTTP)
                probes.append(asyncio.create_task(asyncio.to_thread(scrape, port, "/readyz")))
                probes.append(asyncio.create_task(asyncio.to_thread(scrape, port, "/healthz")))

        try:
            assert await app.run(on_round)
            await app.linger()
            report = await asyncio.wait_for(fleet, machine_speed.seconds(30.0))
            mid_run["ready"], mid_run["health"] = [(await p)[0] for p in probes]
            mid_run["metrics"] = await asyncio.to_thread(scrape, port)
            mid_run["ready_after"] = (await asyncio.to_thread(scrape, port, "/readyz"))[0]
            mid_run["missing"] = (await asyncio.to_thread(scrape, port, "/nope"))[0]
        finally:
            await app.stop()
        return report

    report = asyncio.run(scenario())
    assert report.errors == [] and report.completed == 50, (report.errors[:3], str(machine_speed))

    records = [json.loads(line) for line in (state / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, 13))
    assert all(r["succeeded"] for r in records), ([(r["round"], r["failure"]) for r in records], str(machine_speed))
    final = records[-1]["accuracy"]
    tail = tail_accuracy([r["accuracy"] for r in records])
    assert tail == pytest.approx(reference, abs=0.06), f"gRPC {tail:.3f} vs in-process {reference:.3f} (last 3 rounds)"
    assert final > 0.7
    assert records[5]["federated_accuracy"] is not None and records[11]["federated_accuracy"] is not None
    # 5 devices asked, twice; one may miss the (scaled: 0.6 s idle) deadline of its campaign.
    assert 8 <= report.totals.evaluations <= 10
    for r in records:
        # 12 invitations, fewer only when stragglers of the last round were still busy when this one started.
        assert r["participants"] + r["dropped"] + r["late"] + r["surplus"] + r["rejected"] == r["invited"]
        assert 10 <= r["invited"] <= 12
    assert (state / "model.pt").exists() and json.loads((state / "summary.json").read_text())["rounds"] == 12

    # Ready during the farewell after the last round too: devices must still reach the pod to hear DONE.
    assert (mid_run["ready"], mid_run["health"], mid_run["ready_after"], mid_run["missing"]) == (200, 200, 200, 404)
    status, text = mid_run["metrics"]  # type: ignore[misc]
    assert status == 200
    m = samples(text)
    assert all(name.startswith("fedfleet_") for name, _ in m), "every metric is fedfleet_*"
    assert not any("dev-" in v for _, labels in m for _, v in labels), "no device id as a label"
    assert value(m, "fedfleet_rounds_completed") == 12 == value(m, "fedfleet_rounds_target")
    assert value(m, "fedfleet_round_current") == 12
    assert value(m, "fedfleet_rounds_total", result="succeeded") == 12
    assert value(m, "fedfleet_round_duration_seconds_count") == 12
    assert value(m, "fedfleet_aggregation_seconds_count") == 12
    assert value(m, "fedfleet_devices_checked_in") == 50
    for outcome in ("completed", "dropped", "late", "surplus", "rejected"):
        assert value(m, "fedfleet_participants_total", outcome=outcome) == sum(r[_field(outcome)] for r in records)
    assert value(m, "fedfleet_round_participants", outcome="completed") == records[-1]["participants"]
    lost = sum(r["dropped"] + r["late"] for r in records)
    # Churn counts the devices rounds waited for in vain; over-selection's surplus is not lost.
    waited_for = sum(r["invited"] - r["surplus"] for r in records)
    assert value(m, "fedfleet_churn_rate") == pytest.approx(lost / waited_for)
    dim = 199_210
    accepted = sum(r["participants"] for r in records)
    assert value(m, "fedfleet_received_bytes_total") >= accepted * dim * 4
    # Downloads: one per device and model version it trained or evaluated on.
    assert value(m, "fedfleet_sent_bytes_total") >= accepted * dim * 4 / 2
    assert value(m, "fedfleet_sent_bytes_total") % (dim * 4) == 0
    assert sum(v for (name, _), v in m.items() if name == "fedfleet_updates_rejected_total") == 0
    assert value(m, "fedfleet_model_accuracy") == pytest.approx(final)
    assert value(m, "fedfleet_process_resident_memory_bytes") > 0
    assert value(m, "fedfleet_rpc_duration_seconds_count", method="CheckIn") >= 50


def _field(outcome: str) -> str:
    return {"completed": "participants"}.get(outcome, outcome)


def test_devices_refused_for_good_are_reported_with_what_they_were_doing(tmp_path: Path) -> None:
    """The fleet report names each failed device with a description that is never empty: here every device
    holds a token signed with the wrong key, so the aggregator refuses its first call."""
    job = parse_job(JOB)
    task = build_task(job.spec)
    config = loopback_aggregator_config("e2e-grpc", tmp_path / "state", IDLE_MACHINE)
    security = prepare_security(config, job)
    app = AggregatorApp(job, config, security, inputs=task.aggregator_inputs(), registry=CollectorRegistry())

    async def scenario() -> FleetReport:
        await app.start()
        try:
            settings = replace(fleet_settings(app, security), token_key=new_key(), devices=3)
            return await run_fleet(job, settings, task=task)
        finally:
            await app.stop()

    report = asyncio.run(scenario())
    assert report.completed == 0
    refusal = "AggregatorError: UNAUTHENTICATED: device token signature is invalid for this job"
    assert report.errors == [f"dev-{i:05d}: {refusal} while checking in for round 0" for i in range(3)]

"""Secure aggregation and distributed DP end to end over real gRPC with TLS: the aggregator and a simulated
fleet of SDK agents (keys, training, masked input, unmasking) on 127.0.0.1.

1. A secure-aggregation job reaches the accuracy band of the in-process plaintext run of the same manifest,
   and the aggregator never received a single plaintext update.
2. A distributed-DP job (Skellam noise shares added on the devices, under secure aggregation) stops before
   its ε target, charges the ledger once per included device and exports ε on /metrics.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from grpc_support import fleet_settings, loopback_aggregator_config, tail_accuracy, time_scale
from prometheus_client import CollectorRegistry

from busy_machine import MachineSpeed
from fedfleet.aggregator.app import AggregatorApp, prepare_security
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.privacy.ledger import PrivacyLedger
from fedfleet.runtime.local import LocalRuntime, UnsupportedOnEmbeddedRuntime
from fedfleet.sim.network_fleet import FleetReport, run_fleet
from fedfleet.sim.task import SimulatedTask, build_task
from fl_experiments import make_job

DEVICES = 30
#: Wall seconds per job second on an idle machine, stretched by the measured slowdown. A secure round does real
#: work inside the job's 30 s deadline: each key stage may wait up to 0.5 s of wall time for the last device
#: (the aggregator's floor, whatever the scale), and then the devices still train, mask and upload. At 0.06 the
#: deadline is 1.8 s idle, room for both key stages and the training after them; at the plaintext tests' 0.02
#: it would be 0.6 s, less than the key stages alone may take.
SECURE_IDLE_TIME_SCALE = 0.06


def job_spec(name: str, rounds: int, **privacy: Any) -> FederatedJob:
    return make_job(
        name,
        rounds=rounds,
        seed=9,
        model={"architecture": "2nn"},
        training={"localEpochs": 2, "batchSize": 10, "learningRate": 0.05},
        cohort={"clientsPerRound": 10, "overSelection": 1.2, "minReports": 7, "roundDeadlineSeconds": 30},
        evaluation={"serverEvery": 1},
        simulation={"devices": DEVICES, "dataset": "mnist5k", "testSamples": 500, "dropoutProbability": 0.1},
        privacy=privacy,
    )


def run_over_grpc(
    job: FederatedJob, task: SimulatedTask, state: Path, speed: MachineSpeed
) -> tuple[AggregatorApp, FleetReport]:
    scale = time_scale(speed, SECURE_IDLE_TIME_SCALE)
    config = loopback_aggregator_config(job.metadata.name, state, speed, time_scale=scale)
    security = prepare_security(config, job)
    app = AggregatorApp(job, config, security, inputs=task.aggregator_inputs(), registry=CollectorRegistry())

    async def scenario() -> FleetReport:
        await app.start()
        settings = fleet_settings(app, security, speed.seconds(20.0))
        fleet = asyncio.create_task(run_fleet(job, settings, task=task))
        try:
            assert await app.run()
            await app.linger()
            return await asyncio.wait_for(fleet, speed.seconds(30.0))
        finally:
            await app.stop()

    return app, asyncio.run(scenario())


def records_of(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "metrics.jsonl").read_text().splitlines()]


def test_secure_aggregation_job_matches_the_plaintext_run_without_a_plaintext_update(
    tmp_path: Path, machine_speed: MachineSpeed
) -> None:
    secure = job_spec("secagg-grpc", rounds=10, secureAggregation={"enabled": True})
    plain = job_spec("secagg-grpc", rounds=10)
    task = build_task(plain.spec)
    reference_run = LocalRuntime(plain, tmp_path / "inprocess", task=task)
    reference_run.prepare(resume=False)
    reference = tail_accuracy([r.accuracy for r in reference_run.run()])

    state = tmp_path / "grpc"
    app, report = run_over_grpc(secure, task, state, machine_speed)
    assert report.errors == [] and report.completed == DEVICES, (report.errors[:3], str(machine_speed))

    records = records_of(state)
    assert [r["round"] for r in records] == list(range(1, 11))
    failures = [(r["round"], r["failure"]) for r in records if not r["succeeded"]]
    assert sum(r["succeeded"] for r in records) >= 9, (failures, str(machine_speed))
    tail = tail_accuracy([r["accuracy"] for r in records])
    assert tail == pytest.approx(reference, abs=0.06), f"secure {tail:.3f} vs in-process plaintext {reference:.3f}"
    metric = app.registry.get_sample_value
    assert metric("fedfleet_secagg_rounds_total", {"result": "succeeded"}) == sum(r["succeeded"] for r in records)
    # Every update went through secure aggregation: the plaintext upload RPC was never called.
    assert (metric("fedfleet_rpc_duration_seconds_count", {"method": "UploadUpdate"}) or 0) == 0
    assert metric("fedfleet_rpc_duration_seconds_count", {"method": "UploadMaskedInput"}) >= sum(
        r["participants"] for r in records
    )
    # Devices that dropped while training were stage-2 dropouts the protocol survived: in a round that filled
    # anyway they count as surplus, otherwise as dropped; either way the round went on without them.
    assert sum(r["dropped"] + r["surplus"] for r in records) > 0


def test_the_embedded_runtime_points_secure_jobs_to_the_grpc_transport(tmp_path: Path) -> None:
    job = job_spec("secagg-inprocess", rounds=1, secureAggregation={"enabled": True})
    with pytest.raises(UnsupportedOnEmbeddedRuntime, match="--transport grpc"):
        LocalRuntime(job, tmp_path)


TARGET = 2.5  # z = 2, q = 12/30: ε is 2.35 after 4 rounds and 2.59 after 5


def test_distributed_dp_job_over_grpc_stops_before_its_target_and_charges_the_ledger(
    tmp_path: Path, machine_speed: MachineSpeed
) -> None:
    job = job_spec(
        "ddp-grpc",
        rounds=30,
        secureAggregation={"enabled": True},
        differentialPrivacy={"mode": "distributed", "noiseMultiplier": 2.0, "targetEpsilon": TARGET},
    )
    task = build_task(job.spec)
    state = tmp_path / "state"
    app, report = run_over_grpc(job, task, state, machine_speed)
    assert report.errors == [] and report.completed == DEVICES, (report.errors[:3], str(machine_speed))

    records = records_of(state)
    failures = [(r["round"], r["failure"]) for r in records if not r["succeeded"]]
    assert 1 <= len(records) < 30, (failures, str(machine_speed))
    epsilons = [r["epsilon"] for r in records]
    assert epsilons == sorted(epsilons) and epsilons[-1] <= TARGET
    assert app.stop_reason is not None and app.stop_reason.startswith("PrivacyBudgetExhausted")

    privacy = app.server.privacy
    assert privacy is not None and privacy.central is None, "the noise comes from the devices, not the server"
    ledger = PrivacyLedger(state / "privacy-ledger.db")
    participations = {f"dev-{i:05d}": ledger.participations(f"dev-{i:05d}") for i in range(DEVICES)}
    assert sum(participations.values()) == sum(r["participants"] for r in records if r["succeeded"]) > 0
    metric = app.registry.get_sample_value
    labels = {"job": "ddp-grpc", "namespace": ""}
    assert metric("fedfleet_privacy_job_epsilon_spent", labels) == pytest.approx(epsilons[-1], abs=1e-6)
    assert metric("fedfleet_secagg_rounds_total", {"result": "succeeded"}) >= 1

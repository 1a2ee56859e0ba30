"""Central differential privacy over real gRPC with TLS on 127.0.0.1: the aggregator stops a job before its ε
target, tells every device the job is over, charges the ledger once per participation and exports ε."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from grpc_support import fleet_settings, loopback_aggregator_config
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from busy_machine import IDLE_MACHINE, MachineSpeed
from fedfleet.aggregator.app import AggregatorApp, final_outcome, prepare_security
from fedfleet.api.aggregator_config import AggregatorConfig
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.privacy.ledger import PrivacyLedger
from fedfleet.sim.network_fleet import FleetReport, run_fleet
from fedfleet.sim.task import build_task
from fl_experiments import make_job

TARGET = 2.5  # z = 1.5, q = 5/20: ε is 2.48 after 4 rounds and 2.69 after 5; a larger q stops it sooner
ROUNDS = 20


def dp_job(**privacy: Any) -> FederatedJob:
    return make_job(
        "dp-grpc",
        rounds=ROUNDS,
        seed=5,
        model={"architecture": "logistic"},
        training={"localEpochs": 1, "batchSize": 10, "learningRate": 0.1},
        cohort={"clientsPerRound": 5, "roundDeadlineSeconds": 30},
        evaluation={"serverEvery": 1},
        simulation={"devices": 20, "dataset": "digits", "testSamples": 200},
        privacy=privacy,
    )


def config_for(state: Path, speed: MachineSpeed = IDLE_MACHINE, ledger: Path | None = None) -> AggregatorConfig:
    """The aggregator's config; `speed` matters only to a test that runs rounds."""
    return loopback_aggregator_config("dp-grpc", state, speed, ledger_path=ledger)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_central_dp_job_stops_before_its_target_over_grpc(tmp_path: Path, machine_speed: MachineSpeed) -> None:
    job = dp_job(differentialPrivacy={"mode": "central", "noiseMultiplier": 1.5, "targetEpsilon": TARGET})
    task = build_task(job.spec)
    state = tmp_path / "state"
    config = config_for(state, machine_speed)
    security = prepare_security(config, job)
    app = AggregatorApp(job, config, security, inputs=task.aggregator_inputs(), registry=CollectorRegistry())
    seen: dict[str, Any] = {}

    async def scenario() -> FleetReport:
        await app.start()
        assert app.http_port is not None
        settings = fleet_settings(app, security, machine_speed.seconds(15.0))
        fleet = asyncio.create_task(run_fleet(job, settings, task=task))
        try:
            seen["completed"] = await app.run()
            await app.linger()
            report = await asyncio.wait_for(fleet, machine_speed.seconds(20.0))
            seen["metrics"] = await asyncio.to_thread(scrape, app.http_port)
        finally:
            await app.stop()
        return report

    report = asyncio.run(scenario())
    # The job ended cleanly: every device heard DONE and finished, as at a normal end.
    assert seen["completed"] is True
    assert report.errors == [] and report.completed == 20, (report.errors[:3], str(machine_speed))
    assert app.hub.all_told_done()

    records = [json.loads(line) for line in (state / "metrics.jsonl").read_text().splitlines()]
    # Every round succeeds (a failed round releases nothing and spends no ε), so ε counts rounds.
    assert all(r["succeeded"] for r in records), ([(r["round"], r["failure"]) for r in records], str(machine_speed))
    assert 1 <= len(records) < ROUNDS
    assert [r["round"] for r in records] == list(range(1, len(records) + 1))
    epsilons = [r["epsilon"] for r in records]
    assert all(e is not None for e in epsilons)
    assert epsilons == sorted(epsilons) and epsilons[-1] <= TARGET
    assert app.stop_reason is not None and app.stop_reason.startswith("PrivacyBudgetExhausted")
    summary = json.loads((state / "summary.json").read_text())
    assert summary["stop_reason"] == app.stop_reason and summary["rounds"] == len(records)
    outcome = final_outcome(app)["outcome"]
    assert outcome["reason"] == "PrivacyBudgetExhausted" and f"after round {len(records)}" in outcome["message"]
    # The accountant refused the next round because it would have gone over the target.
    assert f"round {len(records) + 1} would raise ε" in app.stop_reason and "above the budget of 2.5" in app.stop_reason
    privacy = app.server.privacy
    assert privacy is not None

    # The default ledger lives in the state dir; each participation is charged exactly once.
    ledger = PrivacyLedger(state / "privacy-ledger.db")
    devices = [f"dev-{i:05d}" for i in range(20)]
    participations = {d: ledger.participations(d) for d in devices}
    assert sum(participations.values()) == sum(r["participants"] for r in records) > 0
    for d in devices:
        assert ledger.spent(d) == pytest.approx(participations[d] * privacy.charge_per_participation)

    m = seen["metrics"]
    labels = (("job", "dp-grpc"), ("namespace", ""))
    assert m[("fedfleet_privacy_job_epsilon_spent", labels)] == pytest.approx(epsilons[-1], abs=1e-6)
    assert m[("fedfleet_privacy_job_epsilon_target", labels)] == TARGET
    assert m[("fedfleet_privacy_device_epsilon_gcount", ())] == sum(1 for n in participations.values() if n > 0)


def test_restarted_aggregator_keeps_its_ledger_key_and_a_new_run_gets_a_new_one(tmp_path: Path) -> None:
    job = dp_job(differentialPrivacy={"mode": "central", "noiseMultiplier": 1.5})
    task = build_task(job.spec)
    ledger = tmp_path / "shared-ledger.db"

    def job_key(state: Path) -> str:
        config = config_for(state, ledger=ledger)
        app = AggregatorApp(
            job, config, prepare_security(config, job), inputs=task.aggregator_inputs(), registry=CollectorRegistry()
        )
        privacy = app.server.privacy
        assert privacy is not None and privacy.ledger is not None
        assert privacy.q == pytest.approx(5 / 20), "q is planned on spec.simulation.devices"
        return privacy.job_key

    first = job_key(tmp_path / "a")
    assert first.startswith("dp-grpc/")
    assert job_key(tmp_path / "a") == first
    assert job_key(tmp_path / "b") != first
    assert ledger.exists()


def test_a_secure_job_whose_ring_would_overflow_is_refused_naming_the_field(tmp_path: Path) -> None:
    job = dp_job(
        differentialPrivacy={"mode": "distributed", "noiseMultiplier": 1.0},
        secureAggregation={"enabled": True, "quantizationBits": 32},
    )
    config = config_for(tmp_path)
    with pytest.raises(ValueError, match=r"privacy.secureAggregation.quantizationBits: 32 bits .* more than 62"):
        AggregatorApp(job, config, prepare_security(config, job), registry=CollectorRegistry())

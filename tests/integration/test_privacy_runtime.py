"""Differential privacy in a whole job: ε after every round, a budget that stops the job, the device ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedfleet.privacy.dp.accountant import epsilon_spent
from fedfleet.privacy.ledger import PrivacyLedger
from fedfleet.runtime.local import LocalRuntime
from fl_experiments import make_job


def dp_job(rounds: int, **privacy: Any) -> Any:
    return make_job(
        "dp",
        rounds=rounds,
        seed=5,
        model={"architecture": "logistic"},
        training={"localEpochs": 1, "batchSize": 10, "learningRate": 0.1},
        cohort={"clientsPerRound": 5},
        evaluation={"serverEvery": 1},
        simulation={"devices": 20, "dataset": "digits", "testSamples": 300},
        privacy=privacy,
    )


def test_job_stops_before_its_privacy_budget_is_exceeded(tmp_path: Path) -> None:
    target = 3.0  # at z = 1.5 and q = 5/20 that is 7 to 10 rounds (ε after 5 rounds 2.7, after 10 rounds 3.5)
    job = dp_job(50, differentialPrivacy={"mode": "central", "noiseMultiplier": 1.5, "targetEpsilon": target})
    runtime = LocalRuntime(job, tmp_path / "run", ledger_path=tmp_path / "ledger.db")
    runtime.prepare(resume=False)
    records = runtime.run()

    assert runtime.stop_reason is not None and runtime.stop_reason.startswith("PrivacyBudgetExhausted")
    assert 5 <= len(records) < 10
    epsilons = [r.epsilon for r in records]
    assert all(e is not None for e in epsilons)
    assert epsilons == sorted(epsilons) and epsilons[-1] is not None and epsilons[-1] <= target
    # the accountant's ε is the sampled Gaussian mechanism's: q = 5 invited of 20 devices, z = 1.5
    assert epsilons[-1] == round(epsilon_spent(1.5, 5 / 20, len(records), 1e-5), 6)
    # and one more round would have gone over
    assert epsilon_spent(1.5, 5 / 20, len(records) + 1, 1e-5) > target

    ledger = PrivacyLedger(tmp_path / "ledger.db")
    participations = sum(ledger.participations(f"dev-{i:05d}") for i in range(20))
    assert participations == sum(r.participants for r in records)


def test_devices_at_their_lifetime_budget_are_not_selected_across_jobs(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.db"
    # each participation costs the un-amplified ε of one round at z = 2; a budget of 3 allows a few of them
    job = dp_job(12, differentialPrivacy={"mode": "central", "noiseMultiplier": 2.0}, deviceEpsilonBudget=3.0)
    first = LocalRuntime(job, tmp_path / "first", ledger_path=ledger_path)
    first.prepare(resume=False)
    first.run()
    ledger = PrivacyLedger(ledger_path)
    privacy = first.server.privacy
    assert privacy is not None
    assert ledger.cannot_afford(3.0, privacy.charge_per_participation), "the first job used up some devices"

    second = LocalRuntime(job, tmp_path / "second", ledger_path=ledger_path)
    second.prepare(resume=False)
    records = second.run()
    spent = {f"dev-{i:05d}": ledger.spent(f"dev-{i:05d}") for i in range(20)}
    assert max(spent.values()) <= 3.0 + 1e-9, "no device may go over its lifetime budget"
    # once too few devices can afford a round the second job stops instead of overspending
    assert second.stop_reason is not None and "budget" in second.stop_reason
    assert len(records) < 12

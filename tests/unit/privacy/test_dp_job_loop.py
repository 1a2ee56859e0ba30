"""The privacy pieces driving real rounds the way the server should wire them (see the integration notes):
the accountant is asked before each round, the ledger excludes devices at budget, central DP aggregates,
and the job stops before its ε budget is exceeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedfleet.engine.cohort import select_cohort
from fedfleet.engine.round import RoundConfig, TrainingRound
from fedfleet.engine.types import ModelUpdate, Outcome
from fedfleet.privacy.dp.accountant import (
    PrivacyAccountant,
    PrivacyBudgetExceeded,
    epsilon_spent,
    per_participation_epsilon,
    sampling_rate,
)
from fedfleet.privacy.dp.central import CentralDP
from fedfleet.privacy.ledger import PrivacyLedger


def test_a_budgeted_job_stops_before_exceeding_its_epsilon() -> None:
    fleet = [f"device-{i:03d}" for i in range(200)]
    clients, dim, z, delta = 10, 50, 1.0, 1e-5
    q = sampling_rate(clients, len(fleet))
    target = epsilon_spent(z, q, 12, delta) * 1.0001  # room for 12 rounds, not 13
    accountant = PrivacyAccountant(delta, z, q)
    central = CentralDP(clip_norm=1.0, noise_multiplier=z, expected_clients=clients)
    weights = np.zeros(dim, dtype=np.float32)
    released = []
    with pytest.raises(PrivacyBudgetExceeded) as stopped:
        for number in range(1, 100):
            accountant.check_next_round(target)  # before the round runs, not after
            cohort = select_cohort(fleet, clients, 1.0, np.random.default_rng([0, number]))
            config = RoundConfig(number, tuple(cohort), clients, clients, deadline=1.0, dim=dim)
            training_round = TrainingRound(config, central.for_round(np.random.default_rng([1, number])))
            for device in cohort:
                training_round.submit(ModelUpdate(device, number, 1, np.ones(dim, dtype=np.float32)), now=0.5)
            result = training_round.close()
            assert result.aggregate is not None
            weights = weights + result.aggregate
            released.append(accountant.record_round())
    assert len(released) == 12 and stopped.value.round_number == 13
    assert max(released) <= target
    assert released == sorted(released)  # ε reported after every round, growing
    assert np.all(np.isfinite(weights))


def test_devices_at_budget_are_excluded_from_cohorts(tmp_path: Path) -> None:
    fleet = [f"d{i}" for i in range(12)]
    z, delta, clients = 2.0, 1e-5, 4
    charge = per_participation_epsilon(z, delta)
    budget = 2 * charge  # every device may take part in two released rounds
    central = CentralDP(1.0, z, clients)
    with PrivacyLedger(tmp_path / "ledger.db") as ledger:
        participations: dict[str, int] = {d: 0 for d in fleet}
        rounds_run = 0
        for number in range(1, 20):
            excluded = ledger.cannot_afford(budget, charge)
            candidates = [d for d in fleet if d not in excluded]
            if len(candidates) < clients:
                break  # the job stops: too few devices with budget left (reason PrivacyBudgetExhausted)
            cohort = select_cohort(candidates, clients, 1.0, np.random.default_rng(number))
            config = RoundConfig(number, tuple(cohort), clients, clients, deadline=1.0, dim=3)
            training_round = TrainingRound(config, central.for_round(np.random.default_rng(number)))
            for device in cohort:
                training_round.submit(ModelUpdate(device, number, 1, np.ones(3, dtype=np.float32)), now=0.5)
            result = training_round.close()
            done = [d for d, o in result.outcomes.items() if o == Outcome.COMPLETED]
            ledger.charge("ns/job", number, done, charge)
            ledger.charge("ns/job", number, done, charge)  # a replay after a crash charges nobody twice
            for device in done:
                participations[device] += 1
            rounds_run += 1
        # At most 12 devices × 2 participations / 4 per round = 6 rounds; the job ran until too few remained.
        assert 5 <= rounds_run <= 6
        assert sum(participations.values()) == clients * rounds_run
        assert sum(1 for n in participations.values() if n < 2) < clients
        assert max(participations.values()) == 2
        assert all(ledger.spent(d) <= budget * (1 + 1e-9) for d in fleet)
        assert ledger.exhausted(budget) == {d for d, n in participations.items() if n == 2}

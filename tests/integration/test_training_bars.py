"""The cheapest versions of the training benchmarks, run on every CI: real training on real data.

Each asserts the same bar as its benchmark under benchmarks/, on one seed with the tuned learning rates.
"""

from __future__ import annotations

import pytest

from bench_mcmahan_table2 import check
from fl_experiments import byzantine_spec, make_job, noniid_spec, run_to_target, table2_rounds

pytestmark = pytest.mark.slow


def test_more_local_work_needs_fewer_rounds_mcmahan_table2() -> None:
    result = table2_rounds(seed=1)
    rounds = {name: reached for name, (reached, _lr) in result.items()}
    assert check(rounds) == [], rounds


def test_pathological_non_iid_reaches_85_percent_within_100_rounds() -> None:
    outcome = run_to_target(make_job("noniid", **noniid_spec(seed=1)), 0.85)
    assert outcome.rounds_to_target is not None and outcome.rounds_to_target <= 100, outcome


def test_sign_flipping_attackers_break_plain_fedavg() -> None:
    outcome = run_to_target(make_job("byz", **byzantine_spec("fedavg", seed=1)), None)
    assert outcome.final_accuracy < 0.30, outcome


@pytest.mark.parametrize("strategy", ["median", "trimmedMean"])
def test_robust_rules_withstand_sign_flipping_attackers(strategy: str) -> None:
    outcome = run_to_target(make_job("byz", **byzantine_spec(strategy, seed=1)), None)
    assert outcome.final_accuracy >= 0.80, outcome

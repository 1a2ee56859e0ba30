"""What every aggregation rule promises (private copies, refused updates change nothing, clear errors), and
how the robust rules hold up against outliers that pull FedAvg away."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from strategies_support import aggregate, updates

from fedfleet.strategies.base import AggregationRule
from fedfleet.strategies.fedavg import FedAvg
from fedfleet.strategies.krum import Krum, MultiKrum
from fedfleet.strategies.median import Median
from fedfleet.strategies.norm_bounding import NormBounding
from fedfleet.strategies.trimmed_mean import TrimmedMean

ALL_RULES: dict[str, Callable[[], AggregationRule]] = {
    "fedavg": FedAvg,
    "normBounding": lambda: NormBounding(5.0),
    "median": Median,
    "trimmedMean": lambda: TrimmedMean(0.2),
    "krum": lambda: Krum(1),
    "multiKrum": lambda: MultiKrum(1, 3),
}


# ---- every rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_RULES)
def test_reused_caller_buffer_gives_same_result_as_fresh_arrays(name: str) -> None:
    deltas, weights = updates(6, dim=300, seed=3), [1, 2, 3, 4, 5, 6]
    expected = aggregate(ALL_RULES[name](), deltas, weights)
    acc = ALL_RULES[name]().accumulator(300)
    buffer = np.empty(300, np.float32)
    for d, w in zip(deltas, weights, strict=True):
        buffer[:] = d
        acc.add(buffer, w)
    buffer[:] = np.nan  # a rule that kept a reference instead of a copy would now see NaNs
    np.testing.assert_array_equal(acc.result(), expected)


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize(
    ("delta", "num_examples", "message"),
    [
        (np.zeros(5, np.float32), 1, r"shape \(5,\), expected \(4,\)"),
        (np.zeros((4, 1), np.float32), 1, r"shape \(4, 1\), expected \(4,\)"),
        ([0.0, 0.0, 0.0, 0.0], 1, r"shape list, expected \(4,\)"),
        (np.zeros(4, np.float64), 1, "dtype float64, expected float32"),
        (np.zeros(4, np.float32), 0, "num_examples must be a positive integer, got 0"),
        (np.zeros(4, np.float32), -3, "num_examples must be a positive integer"),
        (np.zeros(4, np.float32), 2.5, "num_examples must be a positive integer, got 2.5"),
        (np.zeros(4, np.float32), True, "num_examples must be a positive integer, got True"),
    ],
)
def test_bad_update_is_refused_and_changes_nothing(
    name: str, delta: object, num_examples: object, message: str
) -> None:
    acc = ALL_RULES[name]().accumulator(4)
    acc.add(np.ones(4, np.float32), 1)
    with pytest.raises(ValueError, match=message):
        acc.add(delta, num_examples)  # type: ignore[arg-type]
    assert acc.count == 1


@pytest.mark.parametrize("name", ALL_RULES)
def test_result_without_updates_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="no updates"):
        ALL_RULES[name]().accumulator(4).result()


@pytest.mark.parametrize("dim", [0, -1, 2.0, True])
def test_bad_dim_is_refused(dim: object) -> None:
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        FedAvg().accumulator(dim)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        Median().accumulator(dim)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALL_RULES)
def test_streaming_flag_matches_memory_behaviour(name: str) -> None:
    rule = ALL_RULES[name]()
    assert rule.name == name
    assert rule.streaming == (name in ("fedavg", "normBounding"))


# ---- robustness ---------------------------------------------------------------------------------------


def honest_and_attackers(honest: int, attackers: int, dim: int = 500) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(42)
    center = rng.standard_normal(dim).astype(np.float32)
    good = [(center + 0.05 * rng.standard_normal(dim)).astype(np.float32) for _ in range(honest)]
    bad = [np.full(dim, 1e6 * (-1) ** i, np.float32) for i in range(attackers)]
    return good + bad, center


@pytest.mark.parametrize(
    "rule",
    [Median(), TrimmedMean(0.3), Krum(3), MultiKrum(3)],
    ids=lambda r: r.name,
)
def test_robust_rules_ignore_huge_outliers_that_pull_fedavg_away(rule: AggregationRule) -> None:
    deltas, center = honest_and_attackers(honest=7, attackers=3)
    weights = [10] * 7 + [1000] * 3  # attackers also claim many examples
    robust = aggregate(rule, deltas, weights)
    naive = aggregate(FedAvg(), deltas, weights)
    assert np.max(np.abs(robust - center)) < 0.25
    assert np.max(np.abs(naive - center)) > 1e4


def test_norm_bounding_limits_how_far_outliers_move_the_mean() -> None:
    deltas, center = honest_and_attackers(honest=7, attackers=1)
    bound = float(np.linalg.norm(center)) * 1.5
    out = aggregate(NormBounding(bound), deltas)
    # out - center = (clipped attacker - center) / 8 + honest noise, so at most (bound + |center|) / 8 + noise.
    assert np.linalg.norm(out - center) < (bound + np.linalg.norm(center)) / 8 + 0.1
    assert np.linalg.norm(aggregate(FedAvg(), deltas) - center) > 1e5

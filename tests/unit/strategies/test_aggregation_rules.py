"""Aggregation rules: each one against a straightforward reference, plus weighting, robustness to outliers,
streaming memory, and the errors callers see."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import scipy.stats  # type: ignore[import-untyped]  # an independent reference for the trimmed mean

from fedfleet.api.federatedjob import AggregationSpec, Strategy
from fedfleet.strategies.base import COLUMN_BLOCK, AggregationRule
from fedfleet.strategies.factory import (
    STRATEGY_NAMES,
    build_strategy,
    needs_individual_updates,
    parse_strategy,
)
from fedfleet.strategies.fedadagrad import FedAdagrad
from fedfleet.strategies.fedadam import FedAdam
from fedfleet.strategies.fedavg import FedAvg, FedAvgServer
from fedfleet.strategies.fedavgm import FedAvgM
from fedfleet.strategies.fedyogi import FedYogi
from fedfleet.strategies.krum import Krum, MultiKrum, krum_scores, squared_distances
from fedfleet.strategies.median import Median
from fedfleet.strategies.norm_bounding import NormBounding
from fedfleet.strategies.trimmed_mean import TrimmedMean, trim_count

# Crosses a column-block boundary, so block-wise code paths are exercised.
DIM = COLUMN_BLOCK + 37

ALL_RULES: dict[str, Callable[[], AggregationRule]] = {
    "fedavg": FedAvg,
    "normBounding": lambda: NormBounding(5.0),
    "median": Median,
    "trimmedMean": lambda: TrimmedMean(0.2),
    "krum": lambda: Krum(1),
    "multiKrum": lambda: MultiKrum(1, 3),
}


def updates(n: int, dim: int = DIM, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(dim)).astype(np.float32) for _ in range(n)]


def aggregate(rule: AggregationRule, deltas: list[np.ndarray], weights: list[int] | None = None) -> np.ndarray:
    acc = rule.accumulator(deltas[0].shape[0])
    for i, d in enumerate(deltas):
        acc.add(d, weights[i] if weights else 1)
    assert acc.count == len(deltas)
    out = acc.result()
    assert out.dtype == np.float32 and out.shape == deltas[0].shape
    return out


# ---- FedAvg -------------------------------------------------------------------------------------------


def test_fedavg_equals_sequential_float64_weighted_mean_exactly() -> None:
    deltas, weights = updates(7), [3, 1, 40, 7, 7, 2, 100]
    total = np.zeros(DIM, dtype=np.float64)
    for d, w in zip(deltas, weights, strict=True):
        total += w * d.astype(np.float64)
    expected = (total / sum(weights)).astype(np.float32)
    np.testing.assert_array_equal(aggregate(FedAvg(), deltas, weights), expected)
    np.testing.assert_allclose(
        aggregate(FedAvg(), deltas, weights), np.average(np.stack(deltas), axis=0, weights=weights), rtol=1e-6
    )


def test_fedavg_weights_by_num_examples() -> None:
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    np.testing.assert_array_equal(aggregate(FedAvg(), [ones, zeros], [3, 1]), np.full(4, 0.75, np.float32))
    np.testing.assert_array_equal(aggregate(FedAvg(), [ones, zeros], [1, 1]), np.full(4, 0.5, np.float32))


def test_fedavg_keeps_float64_precision_where_float32_sums_would_lose_it() -> None:
    # 1 + 1e-8 is 1 in float32; the float64 running sum still sees the small updates.
    big = np.full(3, 1.0, np.float32)
    small = np.full(3, 1e-4, np.float32)
    acc = FedAvg().accumulator(3)
    acc.add(big, 1)
    for _ in range(9999):
        acc.add(small, 1)
    expected = (1.0 + 9999 * float(np.float32(1e-4))) / 10000
    np.testing.assert_allclose(acc.result(), expected, rtol=1e-6)


def test_fedavg_memory_does_not_grow_with_updates() -> None:
    dim = 1_000_000
    update_bytes = dim * 4

    def peak(n: int) -> int:
        buffer = np.empty(dim, np.float32)
        rng = np.random.default_rng(1)
        tracemalloc.start()
        try:
            acc = FedAvg().accumulator(dim)
            for _ in range(n):
                rng.standard_normal(dtype=np.float32, out=buffer)
                acc.add(buffer, 5)
            acc.result()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    p5, p50 = peak(5), peak(50)
    assert p50 - p5 < 0.5 * update_bytes, (p5, p50)
    # float64 sum (2 updates) + result (1) + small scratch: nothing per update is kept.
    assert p50 < 3.5 * update_bytes


# ---- all rules: copies, validation, errors ------------------------------------------------------------


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


# ---- norm bounding ------------------------------------------------------------------------------------


def test_norm_bounding_matches_clip_then_weighted_mean() -> None:
    deltas = updates(5, dim=1000, seed=4)
    deltas[1] *= 10
    deltas[3] *= 0.01
    weights = [5, 1, 2, 9, 3]
    bound = 20.0
    clipped = [d.astype(np.float64) * min(1.0, bound / float(np.linalg.norm(d.astype(np.float64)))) for d in deltas]
    expected = np.average(np.stack(clipped), axis=0, weights=weights)
    acc = NormBounding(bound).accumulator(1000)
    for d, w in zip(deltas, weights, strict=True):
        acc.add(d, w)
    np.testing.assert_allclose(acc.result(), expected, rtol=1e-6, atol=1e-7)
    norms = [np.linalg.norm(d.astype(np.float64)) for d in deltas]
    assert acc.clipped == sum(n > bound for n in norms) > 0  # type: ignore[attr-defined]


def test_norm_bounding_leaves_small_updates_alone_and_scales_big_ones_to_the_bound() -> None:
    small = updates(4, dim=50, seed=5, scale=0.01)
    np.testing.assert_array_equal(aggregate(NormBounding(100.0), small), aggregate(FedAvg(), small))
    big = np.full(50, 3.0, np.float32)
    out = aggregate(NormBounding(2.0), [big])
    assert math.isclose(float(np.linalg.norm(out.astype(np.float64))), 2.0, rel_tol=1e-6)
    np.testing.assert_allclose(out / np.linalg.norm(out), big / np.linalg.norm(big), rtol=1e-6)


def test_norm_bounding_clips_a_huge_outlier_instead_of_zeroing_it() -> None:
    # Squares of 1e30 overflow float32; the norm must still be computed correctly.
    huge = np.full(10, 1e30, np.float32)
    out = aggregate(NormBounding(1.0), [huge])
    np.testing.assert_allclose(out, np.full(10, 1 / math.sqrt(10)), rtol=1e-6)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_norm_bounding_rejects_a_bad_bound(bound: float) -> None:
    with pytest.raises(ValueError, match="norm_bound must be a positive finite number"):
        NormBounding(bound)


# ---- median and trimmed mean --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_median_equals_numpy_median_and_ignores_weights(n: int) -> None:
    deltas = updates(n, seed=n)
    expected = np.median(np.stack(deltas), axis=0)
    np.testing.assert_array_equal(aggregate(Median(), deltas, list(range(1, n + 1))), expected)


@pytest.mark.parametrize(
    ("n", "fraction", "k"),
    [(10, 0.1, 1), (100, 0.29, 29), (10, 0.0, 0), (3, 0.4, 1), (2, 0.49, 0), (1, 0.4, 0), (9, 0.3, 2)],
)
def test_trim_count(n: int, fraction: float, k: int) -> None:
    assert trim_count(n, fraction) == k
    assert n - 2 * trim_count(n, fraction) >= 1


@pytest.mark.parametrize(("n", "fraction"), [(10, 0.1), (11, 0.25), (7, 0.0), (4, 0.3), (20, 0.45)])
def test_trimmed_mean_equals_scipy_trim_mean(n: int, fraction: float) -> None:
    deltas = updates(n, seed=n)
    expected = scipy.stats.trim_mean(np.stack(deltas).astype(np.float64), fraction, axis=0)
    np.testing.assert_allclose(aggregate(TrimmedMean(fraction), deltas), expected, rtol=1e-6, atol=1e-7)


def test_trimmed_mean_by_hand() -> None:
    column = [np.array([v], np.float32) for v in (5.0, -100.0, 1.0, 2.0, 1000.0)]
    # 5 values, fraction 0.2: cut one each end -> mean of 1, 2, 5.
    np.testing.assert_array_equal(aggregate(TrimmedMean(0.2), column), np.array([8 / 3], np.float32))


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7])
def test_trimmed_mean_rejects_a_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"trim_fraction must be in \[0, 0.5\)"):
        TrimmedMean(fraction)


# ---- Krum ---------------------------------------------------------------------------------------------


def brute_force_krum_scores(deltas: list[np.ndarray], f: int) -> np.ndarray:
    n = len(deltas)
    x = [d.astype(np.float64) for d in deltas]
    scores = []
    for i in range(n):
        dists = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dists[: n - f - 2]))
    return np.array(scores)


def test_gram_distances_and_scores_match_brute_force() -> None:
    deltas = updates(9, dim=200, seed=9)
    x = np.stack(deltas).astype(np.float64)
    dist = squared_distances(x @ x.T)
    direct = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(dist, direct, rtol=1e-9, atol=1e-9)
    for f in (0, 1, 3):
        np.testing.assert_allclose(krum_scores(dist, f), brute_force_krum_scores(deltas, f), rtol=1e-9)


def test_krum_returns_the_best_scored_update_exactly() -> None:
    deltas = updates(8, seed=8)
    best = int(np.argmin(brute_force_krum_scores(deltas, 2)))
    acc = Krum(2).accumulator(DIM)
    for d in deltas:
        acc.add(d, 1)
    np.testing.assert_array_equal(acc.result(), deltas[best])
    assert acc.selected == (best,)  # type: ignore[attr-defined]


def test_multi_krum_is_the_weighted_mean_of_the_m_best() -> None:
    deltas, weights = updates(8, seed=10), [1, 5, 2, 8, 3, 3, 4, 1]
    order = np.argsort(brute_force_krum_scores(deltas, 1), kind="stable")[:4]
    expected = np.average(np.stack([deltas[i] for i in order]), axis=0, weights=[weights[i] for i in order])
    np.testing.assert_allclose(aggregate(MultiKrum(1, 4), deltas, weights), expected, rtol=1e-6, atol=1e-7)


def test_multi_krum_selects_n_minus_f_by_default() -> None:
    deltas = updates(7, dim=100, seed=11)
    acc = MultiKrum(2).accumulator(100)
    for d in deltas:
        acc.add(d, 1)
    acc.result()
    assert len(acc.selected) == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize(("f", "n"), [(0, 2), (1, 4), (2, 6)])
def test_krum_with_too_few_updates_says_how_many_it_needs(f: int, n: int) -> None:
    acc = Krum(f).accumulator(10)
    for d in updates(n, dim=10):
        acc.add(d, 1)
    with pytest.raises(ValueError, match=rf"at least 2f\+3 = {2 * f + 3} updates to tolerate f={f} .* got {n}"):
        acc.result()


def test_multi_krum_selecting_more_than_the_round_has_is_an_error() -> None:
    acc = MultiKrum(0, 5).accumulator(10)
    for d in updates(4, dim=10):
        acc.add(d, 1)
    with pytest.raises(ValueError, match="selects m=5 updates but the round has only 4"):
        acc.result()


def test_krum_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="byzantine_count must be >= 0"):
        Krum(-1)
    with pytest.raises(ValueError, match="multiKrum select must be >= 1"):
        MultiKrum(1, 0)


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


# ---- registry -----------------------------------------------------------------------------------------


EXPECTED = {
    "fedavg": ("fedavg", FedAvgServer),
    "fedprox": ("fedavg", FedAvgServer),
    "fedavgm": ("fedavg", FedAvgM),
    "fedadam": ("fedavg", FedAdam),
    "fedyogi": ("fedavg", FedYogi),
    "fedadagrad": ("fedavg", FedAdagrad),
    "median": ("median", FedAvgServer),
    "trimmedMean": ("trimmedMean", FedAvgServer),
    "krum": ("krum", FedAvgServer),
    "multiKrum": ("multiKrum", FedAvgServer),
    "normBounding": ("normBounding", FedAvgServer),
}


def test_every_strategy_has_a_rule_and_optimizer() -> None:
    assert set(STRATEGY_NAMES) == {s.value for s in Strategy} == set(EXPECTED)
    for name in STRATEGY_NAMES:
        rule, opt = build_strategy(AggregationSpec(strategy=name, server_learning_rate=0.3))
        assert (rule.name, type(opt)) == EXPECTED[name]
        assert opt.learning_rate == 0.3


def test_registry_passes_the_spec_parameters_through() -> None:
    spec = AggregationSpec.model_validate(
        {
            "strategy": "multiKrum",
            "byzantineCount": 2,
            "multiKrumSelect": 4,
            "trimFraction": 0.2,
            "normBound": 3.5,
            "serverMomentum": 0.5,
            "beta1": 0.7,
            "beta2": 0.8,
            "tau": 0.01,
        }
    )
    rule, _ = build_strategy(spec)
    assert isinstance(rule, MultiKrum) and (rule.byzantine_count, rule.select) == (2, 4)
    trimmed, _ = build_strategy(spec.model_copy(update={"strategy": Strategy.TRIMMED_MEAN}))
    assert isinstance(trimmed, TrimmedMean) and trimmed.trim_fraction == 0.2
    bounded, _ = build_strategy(spec.model_copy(update={"strategy": Strategy.NORM_BOUNDING}))
    assert isinstance(bounded, NormBounding) and bounded.norm_bound == 3.5
    _, momentum = build_strategy(spec.model_copy(update={"strategy": Strategy.FEDAVGM}))
    assert isinstance(momentum, FedAvgM) and momentum.momentum == 0.5
    _, yogi = build_strategy(spec.model_copy(update={"strategy": Strategy.FEDYOGI}))
    assert isinstance(yogi, FedYogi) and (yogi.beta1, yogi.beta2, yogi.tau) == (0.7, 0.8, 0.01)


def test_dim_hint_allocates_optimizer_state_up_front() -> None:
    _, adam = build_strategy(AggregationSpec(strategy=Strategy.FEDADAM, tau=0.1), dim_hint=12)
    state = adam.state_dict()
    assert state["m"].shape == state["v"].shape == (12,)
    _, lazy = build_strategy(AggregationSpec(strategy=Strategy.FEDADAM))
    assert set(lazy.state_dict()) == {"step"}


def test_needs_individual_updates() -> None:
    individual = {name for name in STRATEGY_NAMES if needs_individual_updates(name)}
    assert individual == {"median", "trimmedMean", "krum", "multiKrum"}
    assert needs_individual_updates(Strategy.KRUM)
    for name in individual:
        assert not build_strategy(AggregationSpec(strategy=name))[0].streaming


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown strategy 'fedsgd'; expected one of fedavg, fedavgm, .*normBounding"):
        parse_strategy("fedsgd")
    with pytest.raises(ValueError, match="unknown strategy"):
        needs_individual_updates("Median")

"""Krum and Multi-Krum against a brute-force reference of the scores."""

from __future__ import annotations

import numpy as np
import pytest
from strategies_support import DIM, aggregate, updates

from fedfleet.strategies.krum import Krum, MultiKrum, krum_scores, squared_distances


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

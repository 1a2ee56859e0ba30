"""Norm bounding: clip each update to the bound, then the weighted mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
from strategies_support import aggregate, updates

from fedfleet.strategies.fedavg import FedAvg
from fedfleet.strategies.norm_bounding import NormBounding


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

"""The coordinate-wise trimmed mean, against scipy's."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats  # type: ignore[import-untyped]  # an independent reference for the trimmed mean
from strategies_support import aggregate, updates

from fedfleet.strategies.trimmed_mean import TrimmedMean, trim_count


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

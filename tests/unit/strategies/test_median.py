"""The coordinate-wise median."""

from __future__ import annotations

import numpy as np
import pytest
from strategies_support import aggregate, updates

from fedfleet.strategies.median import Median


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_median_equals_numpy_median_and_ignores_weights(n: int) -> None:
    deltas = updates(n, seed=n)
    expected = np.median(np.stack(deltas), axis=0)
    np.testing.assert_array_equal(aggregate(Median(), deltas, list(range(1, n + 1))), expected)

"""Coordinate-wise trimmed mean, unweighted (Yin et al. 2018): per coordinate, drop the ⌊βn⌋ largest and
⌊βn⌋ smallest values and average the rest.

Robustness: tolerates up to ⌊βn⌋ arbitrary updates per coordinate (β = trim_fraction). Needs every update.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from fedfleet.models.vector import Vector
from fedfleet.strategies.base import Accumulator, AggregationRule, StoredUpdates, require_updates


def trim_count(n: int, trim_fraction: float) -> int:
    """Values cut from each end among n: ⌊βn⌋, but never so many that nothing is left."""
    # The epsilon absorbs binary rounding of β·n (0.29 · 100 = 28.999…), so the cut is the one people expect.
    k = math.floor(trim_fraction * n + 1e-9)
    return max(0, min(k, (n - 1) // 2))


def trimmed_mean(matrix: NDArray[np.float32], trim_fraction: float) -> Vector:
    """Trimmed mean of each column of an n × d matrix; the kept values are averaged in float64."""
    n = matrix.shape[0]
    k = trim_count(n, trim_fraction)
    kept = np.sort(matrix, axis=0)[k : n - k] if k else matrix
    mean: NDArray[np.float64] = kept.mean(axis=0, dtype=np.float64)
    return mean.astype(np.float32)


class TrimmedMeanAccumulator(StoredUpdates):
    def __init__(self, dim: int, trim_fraction: float) -> None:
        super().__init__(dim)
        self._trim = trim_fraction

    def result(self) -> Vector:
        require_updates(self.count)
        out: Vector = np.empty(self._dim, dtype=np.float32)
        for cols, block in self.blocks():
            out[cols] = trimmed_mean(block, self._trim)
        return out


class TrimmedMean(AggregationRule):
    name = "trimmedMean"
    streaming = False

    def __init__(self, trim_fraction: float) -> None:
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
        self.trim_fraction = float(trim_fraction)

    def accumulator(self, dim: int) -> Accumulator:
        return TrimmedMeanAccumulator(dim, self.trim_fraction)

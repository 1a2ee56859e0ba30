"""Coordinate-wise median of the updates, unweighted (Yin et al. 2018).

Robustness: each coordinate stays within the range of the honest values while fewer than half of the
updates are arbitrary (breakdown point 1/2). Needs every update at once.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedfleet.models.vector import Vector
from fedfleet.strategies.base import Accumulator, AggregationRule, StoredUpdates, require_updates


def coordinate_median(matrix: NDArray[np.float32]) -> Vector:
    """Median of each column of an n × d matrix (the mean of the two middle values when n is even)."""
    return np.median(matrix, axis=0).astype(np.float32, copy=False)


class MedianAccumulator(StoredUpdates):
    def result(self) -> Vector:
        require_updates(self.count)
        out: Vector = np.empty(self._dim, dtype=np.float32)
        for cols, block in self.blocks():
            out[cols] = coordinate_median(block)
        return out


class Median(AggregationRule):
    name = "median"
    streaming = False

    def accumulator(self, dim: int) -> Accumulator:
        return MedianAccumulator(dim)

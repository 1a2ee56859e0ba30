"""Norm bounding: clip each update to L2 norm `norm_bound`, then take the example-weighted mean.

Robustness: bounds how far any one device can move the aggregate (at most weight share × norm_bound), which
blunts boosted model-replacement updates (Sun et al. 2019), but does not remove them. Streaming, O(dim).
"""

from __future__ import annotations

import math

import numpy as np

from fedfleet.models.vector import Vector
from fedfleet.strategies.base import COLUMN_BLOCK, Accumulator, AggregationRule, check_update, require_updates
from fedfleet.strategies.fedavg import WeightedSum


def clip_factor(norm: float, bound: float) -> float:
    """The factor that scales a vector of L2 norm `norm` to norm at most `bound` (1 if already inside)."""
    return 1.0 if norm <= bound else bound / norm


class NormBoundingAccumulator(Accumulator):
    def __init__(self, dim: int, norm_bound: float) -> None:
        self._sum = WeightedSum(dim)
        self._bound = norm_bound
        self._scratch = np.empty(min(self._sum.dim, COLUMN_BLOCK), dtype=np.float64)
        self._count = 0
        self.clipped = 0  # how many updates were scaled down; a gauge of attack or misconfiguration

    def _norm(self, delta: Vector) -> float:
        # Squares summed in float64: a float32 sum of squares overflows to inf for large outliers, which would
        # scale the update to zero instead of to the bound.
        total = 0.0
        for start in range(0, self._sum.dim, COLUMN_BLOCK):
            stop = min(start + COLUMN_BLOCK, self._sum.dim)
            scratch = self._scratch[: stop - start]
            np.copyto(scratch, delta[start:stop])
            total += float(np.dot(scratch, scratch))
        return math.sqrt(total)

    def add(self, delta: Vector, num_examples: int) -> None:
        check_update(delta, num_examples, self._sum.dim)
        factor = clip_factor(self._norm(delta), self._bound)
        if factor < 1.0:
            self.clipped += 1
        self._sum.add_scaled(delta, float(num_examples) * factor, int(num_examples))
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> Vector:
        require_updates(self._count)
        return self._sum.mean()


class NormBounding(AggregationRule):
    name = "normBounding"
    streaming = True

    def __init__(self, norm_bound: float) -> None:
        if not (math.isfinite(norm_bound) and norm_bound > 0):
            raise ValueError(f"norm_bound must be a positive finite number, got {norm_bound!r}")
        self.norm_bound = float(norm_bound)

    def accumulator(self, dim: int) -> Accumulator:
        return NormBoundingAccumulator(dim, self.norm_bound)

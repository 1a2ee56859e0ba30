"""FedAvg: the mean of the updates weighted by each device's number of examples (McMahan et al. 2017), and
the plain server step x ← x + ηΔ that every strategy without a server optimizer of its own uses.

Robustness: none — one arbitrary update can move the mean arbitrarily far; use it when devices are honest.
The sum is streamed: each update is folded into one float64 running sum as it arrives, so memory is O(dim)
whatever the cohort size.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedfleet.models.vector import Vector
from fedfleet.strategies.base import (
    COLUMN_BLOCK,
    Accumulator,
    AggregationRule,
    Float64,
    ServerOptimizer,
    check_dim,
    check_update,
    require_updates,
)


class WeightedSum:
    """Running Σ coefᵢ·δᵢ in float64 and Σ weightᵢ as an exact integer.

    Folding in block by block through one small float64 scratch buffer keeps float64 precision without a
    dim-sized temporary per update (`sum += coef * delta` would round the product to float32 first).
    """

    def __init__(self, dim: int) -> None:
        self.dim = check_dim(dim)
        self._sum = np.zeros(self.dim, dtype=np.float64)
        self._scratch = np.empty(min(self.dim, COLUMN_BLOCK), dtype=np.float64)
        self.total_weight = 0

    def add_scaled(self, delta: Vector, coef: float, weight: int) -> None:
        """Add coef·delta to the sum and weight to the total. The caller has validated `delta`."""
        for start in range(0, self.dim, COLUMN_BLOCK):
            stop = min(start + COLUMN_BLOCK, self.dim)
            scratch = self._scratch[: stop - start]
            np.multiply(delta[start:stop], coef, out=scratch, dtype=np.float64)
            part = self._sum[start:stop]
            np.add(part, scratch, out=part)
        self.total_weight += weight

    def mean(self) -> Vector:
        """Σ coefᵢ·δᵢ / Σ weightᵢ as float32; divides in float64 and rounds once into the output."""
        out: NDArray[np.float32] = np.empty(self.dim, dtype=np.float32)
        np.divide(self._sum, float(self.total_weight), out=out, casting="same_kind")
        return out


class WeightedMeanAccumulator(Accumulator):
    def __init__(self, dim: int) -> None:
        self._sum = WeightedSum(dim)
        self._count = 0

    def add(self, delta: Vector, num_examples: int) -> None:
        check_update(delta, num_examples, self._sum.dim)
        self._sum.add_scaled(delta, float(num_examples), int(num_examples))
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> Vector:
        require_updates(self._count)
        return self._sum.mean()


class FedAvg(AggregationRule):
    """Weighted mean; also the aggregation of FedProx and of every server-optimizer strategy."""

    name = "fedavg"
    streaming = True

    def accumulator(self, dim: int) -> Accumulator:
        return WeightedMeanAccumulator(dim)


class FedAvgServer(ServerOptimizer):
    """x ← x + ηΔ."""

    name = "fedavg"

    def _step(self, delta: Float64) -> Float64:
        delta *= self.learning_rate
        return delta

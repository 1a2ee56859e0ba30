"""FedAvgM: FedAvg with server momentum (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data
Distribution"). The momentum carries the direction of past rounds across rounds whose cohorts pull in
different directions, which is what helps on non-IID data."""

from __future__ import annotations

import numpy as np

from fedfleet.strategies.base import Float64, ServerOptimizer, check_decay


class FedAvgM(ServerOptimizer):
    """v ← βv + Δ; x ← x + ηv."""

    name = "fedavgm"
    state_keys = ("momentum",)

    def __init__(self, learning_rate: float, momentum: float) -> None:
        self.momentum = check_decay("server momentum", momentum)
        super().__init__(learning_rate)

    def _initial_state(self, dim: int) -> dict[str, Float64]:
        return {"momentum": np.zeros(dim, dtype=np.float64)}

    def _step(self, delta: Float64) -> Float64:
        v = self._state["momentum"]
        v *= self.momentum
        v += delta
        return self.learning_rate * v

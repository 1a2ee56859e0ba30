"""FedOpt: the adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization",
Algorithm 2), which differ only in how they update the second moment v; `fedadam`, `fedyogi` and
`fedadagrad` each supply that one rule.

The paper's adaptive rules have no bias correction; neither do these.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from fedfleet.strategies.base import Float64, ServerOptimizer, check_decay, check_rate


class FedOpt(ServerOptimizer):
    """m ← β1·m + (1−β1)·Δ;  v ← second_moment(v, Δ²);  x ← x + η·m / (√v + τ),  with v initialised to τ²."""

    state_keys = ("m", "v")

    def __init__(self, learning_rate: float, beta1: float, beta2: float, tau: float) -> None:
        self.beta1 = check_decay("beta1", beta1)
        self.beta2 = check_decay("beta2", beta2)
        self.tau = check_rate("tau", tau)
        super().__init__(learning_rate)

    def _initial_state(self, dim: int) -> dict[str, Float64]:
        return {"m": np.zeros(dim, dtype=np.float64), "v": np.full(dim, self.tau**2, dtype=np.float64)}

    @abstractmethod
    def _second_moment(self, v: Float64, delta_sq: Float64) -> None:
        """Update v in place from Δ²."""

    def _step(self, delta: Float64) -> Float64:
        m, v = self._state["m"], self._state["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * delta
        self._second_moment(v, np.square(delta))
        return self.learning_rate * m / (np.sqrt(v) + self.tau)

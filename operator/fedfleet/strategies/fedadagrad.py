"""FedAdagrad (Reddi et al. 2021): the second moment only ever grows, so the step size only ever shrinks."""

from __future__ import annotations

from fedfleet.strategies.base import Float64
from fedfleet.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    """v ← v + Δ² (no second-moment decay, so no β2)."""

    name = "fedadagrad"

    def __init__(self, learning_rate: float, beta1: float, tau: float) -> None:
        super().__init__(learning_rate, beta1, 0.0, tau)

    def _second_moment(self, v: Float64, delta_sq: Float64) -> None:
        v += delta_sq

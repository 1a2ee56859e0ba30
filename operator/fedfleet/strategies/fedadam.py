"""FedAdam (Reddi et al. 2021): Adam's exponentially decaying second moment on the server."""

from __future__ import annotations

from fedfleet.strategies.base import Float64
from fedfleet.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """v ← β2·v + (1−β2)·Δ²."""

    name = "fedadam"

    def _second_moment(self, v: Float64, delta_sq: Float64) -> None:
        v *= self.beta2
        v += (1.0 - self.beta2) * delta_sq

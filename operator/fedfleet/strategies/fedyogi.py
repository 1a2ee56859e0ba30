"""FedYogi (Reddi et al. 2021, after Zaheer et al. 2018): an additive second-moment update."""

from __future__ import annotations

import numpy as np

from fedfleet.strategies.base import Float64
from fedfleet.strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """v ← v − (1−β2)·Δ²·sign(v − Δ²): v moves towards Δ² by an additive step, so it reacts more slowly
    than Adam's multiplicative decay when gradients shrink."""

    name = "fedyogi"

    def _second_moment(self, v: Float64, delta_sq: Float64) -> None:
        v -= (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)

"""What keeps 500 simulated devices cheap: one decoded model per digest for all of them, and an on-device
evaluation that scores for real but takes its latency from the device's class instead of this machine.

Every simulated device still downloads and verifies its own bytes (a tampered artifact is caught by each one);
only the module built from an already verified artifact is shared. Devices only run inference on it, which
never changes a module, so sharing is safe. The latency a simulated device reports is simulated — a
phone-low is slower than a tablet, in proportion to the model's size, with a little per-device jitter drawn
from the seed — so no figure a rollout's gate sees depends on how busy the machine running the test is.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray
from torch import nn

from fedfleet.device.model_health import HealthMeasurement
from fedfleet.models.artifact import ModelArtifact
from fedfleet.models.evaluation import evaluate
from fedfleet.models.params import num_parameters

#: Distinct models a fleet keeps decoded at once (stable, candidate, the one before, a few spare). Devices hold
#: their own references too, so an evicted model lives on as long as a device still runs it.
DEFAULT_SHARED_MODELS = 8
#: Simulated seconds of one single-example inference per million parameters, by device class.
SECONDS_PER_MILLION_PARAMETERS: Mapping[str, float] = MappingProxyType(
    {"phone-low": 0.012, "phone-high": 0.003, "tablet": 0.005}
)
#: A device of a class not in the table (an attribute mix of the caller's own).
DEFAULT_SECONDS_PER_MILLION_PARAMETERS = 0.006
#: σ of the log of a device's latency around its class's figure.
LATENCY_JITTER_SIGMA = 0.2


class SharedModels:
    """Builds each verified artifact's module once, by digest, for every device of a fleet."""

    def __init__(self, build: Callable[[ModelArtifact], nn.Module], capacity: int = DEFAULT_SHARED_MODELS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._build = build
        self._capacity = capacity
        self._modules: OrderedDict[str, nn.Module] = OrderedDict()
        self.builds = 0  # modules actually built (the rest were shared)

    def load(self, digest: str, artifact: ModelArtifact) -> nn.Module:
        module = self._modules.get(digest)
        if module is None:
            module = self._build(artifact)
            self.builds += 1
            self._modules[digest] = module
            while len(self._modules) > self._capacity:
                self._modules.popitem(last=False)
        else:
            self._modules.move_to_end(digest)
        return module


class SimulatedEvaluator:
    """One simulated device's evaluation: real accuracy and loss on its own held-out examples, and the latency
    of its device class (drawn once per device, so it reports the same latency for the same model)."""

    def __init__(
        self, x: NDArray[np.float32], y: NDArray[np.int64], device_class: str, rng: np.random.Generator
    ) -> None:
        if len(y) < 1 or x.shape[0] != len(y):
            raise ValueError(f"held-out data: {x.shape[0]} examples and {len(y)} labels; need the same number >= 1")
        self.x, self.y = x, y
        per_million = SECONDS_PER_MILLION_PARAMETERS.get(device_class, DEFAULT_SECONDS_PER_MILLION_PARAMETERS)
        self.seconds_per_million = per_million * float(math.exp(rng.normal(0.0, LATENCY_JITTER_SIGMA)))
        self.evaluations = 0

    async def measure(self, model: nn.Module) -> HealthMeasurement:
        # Inline on the event loop: a device's few examples take well under a millisecond on the MNIST models,
        # less than handing them to a thread would.
        scored = evaluate(model, self.x, self.y)
        self.evaluations += 1
        latency = self.seconds_per_million * num_parameters(model) / 1e6
        return HealthMeasurement(scored.accuracy, scored.loss, scored.num_examples, latency)

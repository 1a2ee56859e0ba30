"""How a device judges the model it has just activated: accuracy and loss on its own held-out data, and how
long one inference takes. The rollout's gate compares these figures between the candidate and the stable
version, so every device measures them the same way (fedfleet.models.evaluation scores, as the server does).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fedfleet.models.evaluation import evaluate
from fedfleet.models.params import as_tensor

#: A device evaluates on its own few held-out examples, never on a data set: this bounds the work (and the
#: memory of the arrays it is handed) however the SDK is configured.
MAX_HELD_OUT_EXAMPLES = 10_000
#: Single-example inferences timed for the latency figure (the median of them is reported).
DEFAULT_LATENCY_SAMPLES = 5


@dataclass(frozen=True)
class HealthMeasurement:
    """One evaluation of the running model on the device's held-out data."""

    accuracy: float  # in [0, 1]
    loss: float  # mean cross-entropy, >= 0
    examples: int
    latency_seconds: float  # one inference of one example (median of a few), >= 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.accuracy) and 0.0 <= self.accuracy <= 1.0):
            raise ValueError(f"accuracy must be in [0, 1], got {self.accuracy}")
        if not (math.isfinite(self.loss) and self.loss >= 0.0):
            raise ValueError(f"loss must be a finite number >= 0, got {self.loss}")
        if self.examples < 1:
            raise ValueError(f"examples must be at least 1, got {self.examples}")
        if not (math.isfinite(self.latency_seconds) and self.latency_seconds >= 0.0):
            raise ValueError(f"latency_seconds must be a finite number >= 0, got {self.latency_seconds}")


class HealthEvaluator(Protocol):
    async def measure(self, model: nn.Module) -> HealthMeasurement:
        """Evaluate `model` (read only: it may be shared with other devices of a simulation)."""


class HeldOutEvaluator:
    """Scores a model on the device's held-out examples; times single-example inference on `timer`.

    The work runs in `executor` (default: asyncio's), so the device keeps serving its connection meanwhile.
    """

    def __init__(
        self,
        x: NDArray[np.floating],
        y: NDArray[np.integer],
        *,
        timer: Callable[[], float] = time.perf_counter,
        latency_samples: int = DEFAULT_LATENCY_SAMPLES,
        executor: Executor | None = None,
    ) -> None:
        n = int(np.shape(x)[0]) if np.ndim(x) > 0 else 0
        if not 1 <= n <= MAX_HELD_OUT_EXAMPLES:
            raise ValueError(f"held-out data must have 1..{MAX_HELD_OUT_EXAMPLES} examples, got {n}")
        if np.shape(y) != (n,):
            raise ValueError(f"held-out labels have shape {np.shape(y)}, expected ({n},) to match the examples")
        if latency_samples < 1:
            raise ValueError(f"latency_samples must be at least 1, got {latency_samples}")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = np.ascontiguousarray(y, dtype=np.int64)
        self.timer = timer
        self.latency_samples = min(latency_samples, n)
        self.executor = executor

    def measure_now(self, model: nn.Module) -> HealthMeasurement:
        scored = evaluate(model, self.x, self.y)
        return HealthMeasurement(
            accuracy=scored.accuracy,
            loss=scored.loss,
            examples=scored.num_examples,
            latency_seconds=self.inference_seconds(model),
        )

    def inference_seconds(self, model: nn.Module) -> float:
        """The median time of one single-example inference: what an app waits for one prediction."""
        times = []
        with torch.inference_mode():
            for i in range(self.latency_samples):
                example = as_tensor(self.x[i : i + 1])
                started = self.timer()
                model(example)
                times.append(max(0.0, self.timer() - started))
        return float(statistics.median(times))

    async def measure(self, model: nn.Module) -> HealthMeasurement:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.measure_now, model)

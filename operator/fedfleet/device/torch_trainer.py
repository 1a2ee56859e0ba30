"""A Trainer for devices that hold their data as arrays: local SGD and evaluation with torch.

Training runs in a worker thread so the device's event loop keeps its connection alive meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
from numpy.typing import NDArray
from torch import nn

from fedfleet.models.params import load_flat_parameters, parameter_layout
from fedfleet.models.vector import Vector
from fedfleet.proto.codec import Layout

from .client import Task
from .training import EvalResult, LocalResult, evaluate, train_local


class ModelPool:
    """One model per worker thread: models are mutable, and threads must not share one."""

    def __init__(self, factory: Callable[[], nn.Module]) -> None:
        self._factory = factory
        self._local = threading.local()

    def model(self) -> nn.Module:
        model: nn.Module | None = getattr(self._local, "model", None)
        if model is None:
            model = self._factory()
            self._local.model = model
        return model

    def layout(self) -> Layout:
        return tuple(parameter_layout(self.model()))


class TorchTrainer:
    def __init__(
        self,
        models: ModelPool,
        x: NDArray[np.floating],
        y: NDArray[np.integer],
        *,
        holdout_x: NDArray[np.floating] | None = None,
        holdout_y: NDArray[np.integer] | None = None,
        seed: Callable[[int], int] = lambda round_number: round_number,
        executor: Executor | None = None,
    ) -> None:
        self.models = models
        self.x, self.y = x, y
        self.holdout_x, self.holdout_y = holdout_x, holdout_y
        self.seed = seed  # the shuffling seed of a round's training
        self.executor = executor

    def train_now(self, task: Task, weights: Vector) -> LocalResult:
        if task.training is None:
            raise ValueError("a TRAIN task without a training config")
        cfg = task.training
        return train_local(
            self.models.model(),
            self.x,
            self.y,
            global_weights=weights,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            proximal_mu=cfg.proximal_mu,
            seed=self.seed(task.round),
        )

    def evaluate_now(self, weights: Vector) -> EvalResult | None:
        if self.holdout_x is None or self.holdout_y is None or len(self.holdout_y) == 0:
            return None
        model = self.models.model()
        load_flat_parameters(model, weights)
        return evaluate(model, self.holdout_x, self.holdout_y)

    async def train(self, task: Task, weights: Vector) -> LocalResult | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.train_now, task, weights)

    async def evaluate(self, task: Task, weights: Vector) -> EvalResult | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.evaluate_now, weights)

"""The torch side of the aggregator: the model's tensor layout, server-side evaluation, the saved model."""

from __future__ import annotations

from pathlib import Path

import torch

from fedfleet.device.training import evaluate
from fedfleet.engine.types import Vector
from fedfleet.models.params import load_flat_parameters, parameter_layout
from fedfleet.persist.atomic import atomic_writer
from fedfleet.proto.codec import Layout
from fedfleet.runtime.local import Evaluation
from fedfleet.runtime.task import SimulatedTask


def model_layout(task: SimulatedTask) -> Layout:
    return tuple(parameter_layout(task.new_model()))


class ServerEvaluator:
    """Evaluates global weights on the job's held-out test split (called from a worker thread)."""

    def __init__(self, task: SimulatedTask) -> None:
        self._task = task
        self._model = task.new_model()

    def __call__(self, weights: Vector) -> Evaluation | None:
        test = self._task.test
        if test is None:
            return None
        load_flat_parameters(self._model, weights)
        result = evaluate(self._model, test.x, test.y)
        return Evaluation(result.loss, result.accuracy, result.num_examples)


def save_model(path: Path, task: SimulatedTask, weights: Vector, round_number: int) -> Path:
    """The final model in the format of `fedfleet run` (architecture, input shape, classes, state_dict)."""
    model = task.new_model()
    load_flat_parameters(model, weights)
    with atomic_writer(path) as handle:
        torch.save(
            {
                "architecture": task.spec.model.architecture,
                "image_shape": task.train.image_shape,
                "num_classes": task.train.num_classes,
                "round": round_number,
                "state_dict": model.state_dict(),
            },
            handle,
        )
    return path

"""The torch side of the aggregator: the model's tensor layout, server-side evaluation, the saved model."""

from __future__ import annotations

from fedfleet.device.training import evaluate
from fedfleet.models.vector import Vector
from fedfleet.models.params import load_flat_parameters, parameter_layout
from fedfleet.proto.codec import Layout
from fedfleet.runtime.records import Evaluation
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

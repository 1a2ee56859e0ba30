"""Server-side evaluation: the global weights scored on the job's held-out test split."""

from __future__ import annotations

from fedfleet.data.datasets import Dataset
from fedfleet.engine.records import Evaluation
from fedfleet.models.evaluation import evaluate
from fedfleet.models.job_model import JobModel
from fedfleet.models.params import load_flat_parameters
from fedfleet.models.vector import Vector


class ServerEvaluator:
    """Evaluates global weights on the held-out split (called from a worker thread, one call at a time)."""

    def __init__(self, model: JobModel, test: Dataset) -> None:
        self._test = test
        self._model = model.new_model()

    def __call__(self, weights: Vector) -> Evaluation:
        load_flat_parameters(self._model, weights)
        result = evaluate(self._model, self._test.x, self._test.y)
        return Evaluation(result.loss, result.accuracy, result.num_examples)

"""On-device evaluation: accuracy and loss exactly as the server scores a model, inference latency from the
injected timer (the median of single-example inferences), and bad held-out data refused naming the rule."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from fedfleet.device.model_health import MAX_HELD_OUT_EXAMPLES, HealthMeasurement, HeldOutEvaluator
from fedfleet.models.evaluation import evaluate
from fedfleet.models.nets import build_model


def held_out(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, size=n)


def test_accuracy_and_loss_are_the_servers_scores_and_latency_comes_from_the_timer() -> None:
    x, y = held_out()
    model = build_model("logistic", (1, 28, 28), 10, seed=3)
    # A timer that advances by 1, 3, 2, 10, 4 seconds over the five timed inferences: the median is 3.
    steps = iter([1.0, 3.0, 2.0, 10.0, 4.0])
    readings = itertools.accumulate(itertools.chain.from_iterable((0.0, next(steps)) for _ in range(5)))
    evaluator = HeldOutEvaluator(x, y, timer=lambda: next(readings), latency_samples=5)

    measured = asyncio.run(evaluator.measure(model))

    expected = evaluate(model, x, y)
    assert measured.accuracy == pytest.approx(expected.accuracy)
    assert measured.loss == pytest.approx(expected.loss)
    assert measured.examples == 12
    assert measured.latency_seconds == 3.0


def test_fewer_examples_than_latency_samples_time_each_example_once() -> None:
    x, y = held_out(2)
    calls: list[float] = []

    def timer() -> float:
        calls.append(0.0)
        return float(len(calls))

    HeldOutEvaluator(x, y, timer=timer, latency_samples=5).measure_now(build_model("logistic", (1, 28, 28), 10))
    assert len(calls) == 4  # two inferences, each timed from start to end


@pytest.mark.parametrize(
    ("n", "labels", "message"),
    [
        (0, (0,), "held-out data must have 1..10000 examples, got 0"),
        (3, (2,), r"held-out labels have shape \(2,\), expected \(3,\)"),
        (MAX_HELD_OUT_EXAMPLES + 1, (MAX_HELD_OUT_EXAMPLES + 1,), "held-out data must have 1..10000 examples"),
    ],
)
def test_bad_held_out_data_is_refused_naming_the_rule(n: int, labels: tuple[int], message: str) -> None:
    x = np.zeros((n, 1, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        HeldOutEvaluator(x, np.zeros(labels, dtype=np.int64))


@pytest.mark.parametrize(
    ("field", "value"),
    [("accuracy", 1.5), ("accuracy", float("nan")), ("loss", -0.1), ("examples", 0), ("latency_seconds", -1.0)],
)
def test_a_measurement_outside_its_range_cannot_be_made(field: str, value: float) -> None:
    values: dict[str, float] = {"accuracy": 0.5, "loss": 1.0, "examples": 4, "latency_seconds": 0.01}
    values[field] = value
    with pytest.raises(ValueError, match=field):
        HealthMeasurement(**values)  # type: ignore[arg-type]

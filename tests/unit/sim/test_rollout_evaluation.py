"""What keeps a large simulated fleet cheap: each verified model is built once for all devices (and a bounded
number are kept), and each device scores for real while its latency comes from its device class."""

from __future__ import annotations

import asyncio

import numpy as np

from fedfleet.models.artifact import decode
from fedfleet.models.artifact_torch import to_module
from fedfleet.models.evaluation import evaluate
from fedfleet.models.nets import build_model
from fedfleet.models.params import num_parameters
from fedfleet.sim.rollout_evaluation import SECONDS_PER_MILLION_PARAMETERS, SharedModels, SimulatedEvaluator
from rollout_support import artifact_bytes


def test_each_digest_is_built_once_and_the_oldest_is_evicted() -> None:
    shared = SharedModels(to_module, capacity=2)
    one, two, three = (decode(artifact_bytes(seed=s)) for s in (1, 2, 3))
    first = shared.load("sha256:1", one)
    assert shared.load("sha256:1", one) is first
    shared.load("sha256:2", two)
    shared.load("sha256:1", one)  # used again: now the newest
    shared.load("sha256:3", three)  # evicts sha256:2, the least recently used
    assert shared.builds == 3
    assert shared.load("sha256:1", one) is first
    shared.load("sha256:2", two)
    assert shared.builds == 4


def test_scores_are_real_and_latency_follows_the_device_class() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.random((10, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, size=10)
    model = build_model("2nn", (1, 28, 28), 10, seed=1)
    slow = SimulatedEvaluator(x, y, "phone-low", np.random.default_rng(7))
    fast = SimulatedEvaluator(x, y, "phone-high", np.random.default_rng(7))  # the same jitter draw

    slow_m, fast_m = asyncio.run(slow.measure(model)), asyncio.run(fast.measure(model))

    expected = evaluate(model, x, y)
    assert slow_m.accuracy == expected.accuracy and slow_m.loss == expected.loss and slow_m.examples == 10
    ratio = SECONDS_PER_MILLION_PARAMETERS["phone-low"] / SECONDS_PER_MILLION_PARAMETERS["phone-high"]
    assert np.isclose(slow_m.latency_seconds / fast_m.latency_seconds, ratio)
    # Proportional to the model's size: the same device is faster on a smaller model.
    small = build_model("logistic", (1, 28, 28), 10)
    small_m = asyncio.run(slow.measure(small))
    assert np.isclose(small_m.latency_seconds / slow_m.latency_seconds, num_parameters(small) / num_parameters(model))

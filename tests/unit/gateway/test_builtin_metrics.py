"""The builtin provider: candidate from the canary cohort, baseline from stable or control; no reports, no value."""

from __future__ import annotations

import math

import pytest

from fedfleet.api.modelrollout import Baseline, BuiltinMetricName
from fedfleet.gateway.builtin_metrics import builtin_sample
from fedfleet.gateway.health_stats import GenerationHealth

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def _health() -> GenerationHealth:
    health = GenerationHealth(max_devices=1000)
    for i in range(10):
        health.record_active(NEW, "canary", f"c{i}", 0.80 + 0.01 * (i % 2), 0.5, 0.002)
    for i in range(30):
        health.record_active(OLD, "stable", f"s{i}", 0.90, 0.3, 0.001)
    for i in range(10):
        health.record_active(OLD, "control", f"k{i}", 0.92, 0.3, 0.001)
    health.record_failure(NEW, "canary", "c0", "bad_signature")
    return health


def test_accuracy_of_the_canary_against_stable_and_control() -> None:
    summary = _health().summary()
    sample = builtin_sample(summary, BuiltinMetricName.ACCURACY, NEW, OLD, Baseline.STABLE)
    assert sample.value == pytest.approx(0.805) and sample.baseline == pytest.approx(0.90)
    assert sample.reporting_devices == 10
    control = builtin_sample(summary, BuiltinMetricName.ACCURACY, NEW, OLD, Baseline.CONTROL)
    assert control.baseline == pytest.approx(0.92)


def test_activation_failure_rate_counts_failures_among_attempts() -> None:
    sample = builtin_sample(_health().summary(), BuiltinMetricName.ACTIVATION_FAILURE_RATE, NEW, None, Baseline.NONE)
    assert sample.value == pytest.approx(1 / 11) and sample.baseline is None


def test_latency_and_loss() -> None:
    summary = _health().summary()
    assert builtin_sample(summary, BuiltinMetricName.LOSS, NEW, OLD, Baseline.NONE).value == pytest.approx(0.5)
    latency = builtin_sample(summary, BuiltinMetricName.LATENCY_P99, NEW, OLD, Baseline.STABLE)
    assert latency.value is not None and 0.001 < latency.value <= 0.0025
    assert latency.baseline is not None and latency.baseline <= 0.001


def test_no_reports_is_no_value() -> None:
    empty = GenerationHealth(max_devices=10).summary()
    for metric in BuiltinMetricName:
        sample = builtin_sample(empty, metric, NEW, OLD, Baseline.STABLE)
        assert sample.value is None or math.isnan(sample.value)
        assert sample.reporting_devices == 0

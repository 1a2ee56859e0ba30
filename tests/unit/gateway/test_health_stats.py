"""Health figures of one generation: quantiles from histogram buckets, distinct devices within a bound."""

from __future__ import annotations

import math

import pytest

from fedfleet.gateway.health_stats import LATENCY_BUCKETS, GenerationHealth, bucket_quantile


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert bucket_quantile(bounds, [0, 10, 0, 0], 0.5) == pytest.approx(1.5)
    assert bucket_quantile(bounds, [10, 0, 10, 0], 0.75) == pytest.approx(3.0)
    assert bucket_quantile(bounds, [0, 0, 0, 5], 0.99) == 4.0, "above the last bound reads the last bound"
    assert math.isnan(bucket_quantile(bounds, [0, 0, 0, 0], 0.5)), "no data is never a number"


def test_means_latency_and_failures_by_version_and_role() -> None:
    health = GenerationHealth(max_devices=100, generation=3)
    health.record_active("v", "canary", "a", 0.9, 0.2, 0.0004)
    health.record_active("v", "canary", "b", 0.8, 0.4, 0.0004)
    health.record_failure("v", "canary", "c", "bad_signature")
    health.record_active("s", "control", "d", 0.85, 0.3, 0.02)
    by_key = {(h.version, h.role): h for h in health.summary()}
    canary = by_key[("v", "canary")]
    assert (canary.reports, canary.reporting_devices, canary.activation_failures) == (2, 3, 1)
    assert canary.mean_accuracy == pytest.approx(0.85) and canary.mean_loss == pytest.approx(0.3)
    assert LATENCY_BUCKETS[1] < canary.latency_p50_seconds <= LATENCY_BUCKETS[2]
    assert canary.failures_by_reason == {"bad_signature": 1}
    assert by_key[("s", "control")].reporting_devices == 1
    assert health.reporting_devices("v") == 3


def test_distinct_devices_are_bounded_and_read_at_least() -> None:
    health = GenerationHealth(max_devices=5)
    for i in range(50):
        health.record_active("v", "stable", f"dev-{i}", 0.9, 0.1, 0.001)
    assert health.reporting_devices("v") == 5
    (summary,) = health.summary()
    assert summary.reports == 50, "reports still count past the bound"
    health.reset(2)
    assert health.reporting_devices("v") == 0 and health.summary() == [] and health.generation == 2

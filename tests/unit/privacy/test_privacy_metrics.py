"""Privacy metrics: job ε, the per-device ε distribution and the exhausted count, without device ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fedfleet.privacy.ledger import PrivacyLedger
from fedfleet.privacy.metrics import PrivacyMetrics


def test_job_epsilon_gauges() -> None:
    registry = CollectorRegistry()
    metrics = PrivacyMetrics(registry)
    metrics.set_job_epsilon("team-a", "mnist", 1.25, target=4.0)
    labels = {"namespace": "team-a", "job": "mnist"}
    assert registry.get_sample_value("fedfleet_privacy_job_epsilon_spent", labels) == 1.25
    assert registry.get_sample_value("fedfleet_privacy_job_epsilon_target", labels) == 4.0


def test_device_histogram_and_exhausted_count_follow_the_ledger(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = PrivacyMetrics(registry, buckets=(1.0, 2.0, 4.0))
    with PrivacyLedger(tmp_path / "ledger.db") as ledger:
        ledger.charge("ns/j", 1, ["secret-device-1", "secret-device-2", "secret-device-3"], 1.0)
        ledger.charge("ns/j", 2, ["secret-device-1", "secret-device-2"], 1.5)
        ledger.charge("ns/j", 3, ["secret-device-1"], 2.0)  # ε: 4.5, 2.5, 1.0
        metrics.update_from_ledger(ledger, budget=4.0)

        def bucket(le: str) -> float | None:
            return registry.get_sample_value("fedfleet_privacy_device_epsilon_bucket", {"le": le})

        assert [bucket("1.0"), bucket("2.0"), bucket("4.0"), bucket("+Inf")] == [1, 1, 2, 3]
        assert registry.get_sample_value("fedfleet_privacy_device_epsilon_gcount") == 3
        assert registry.get_sample_value("fedfleet_privacy_device_epsilon_gsum") == pytest.approx(8.0)
        assert registry.get_sample_value("fedfleet_privacy_devices_exhausted") == 1

        # A snapshot, not a stream: a device moving up leaves the lower bucket.
        ledger.charge("ns/j", 4, ["secret-device-3"], 2.0)
        metrics.update_from_ledger(ledger, budget=None)
        assert [bucket("1.0"), bucket("2.0"), bucket("4.0"), bucket("+Inf")] == [0, 0, 2, 3]
        assert registry.get_sample_value("fedfleet_privacy_devices_exhausted") == 0

    exposition = generate_latest(registry).decode()
    assert "secret-device" not in exposition  # no device id ever becomes a label


def test_bad_buckets_are_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        PrivacyMetrics(CollectorRegistry(), buckets=(2.0, 1.0))
    with pytest.raises(ValueError, match="buckets"):
        PrivacyMetrics(CollectorRegistry(), buckets=())

"""The gateway's Prometheus metrics, registered on an injected CollectorRegistry.

Per-version aggregates only: no device id is ever a label (cardinality, and it would say who runs what). The
`version` label is always a digest the fleet's view names, or "none" / "other", never a string a device
chose, so a device cannot mint label values. The rollout analysis queries these names; they are a contract.

- fedfleet_gateway_devices{fleet,version,role}: devices heard from within the last check-in window, by the
  version they said they run and the role they are assigned.
- fedfleet_gateway_checkins_total{fleet}
- fedfleet_gateway_health_reports_total{fleet,version,outcome}: outcome ok | activation_failure | refused.
- fedfleet_gateway_model_accuracy{fleet,version}, fedfleet_gateway_model_loss{fleet,version},
  fedfleet_gateway_inference_latency_seconds{fleet,version}: histograms of accepted reports.
- fedfleet_gateway_activation_failures_total{fleet,version,reason}
- fedfleet_gateway_reporting_devices{fleet,version}: distinct devices that reported on the version since the
  fleet's view took its current generation.
- fedfleet_gateway_refusals_total{method,reason}: every refusal, by the protocol's reason.
- fedfleet_gateway_watch_streams: open WatchAssignment streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .health_stats import LATENCY_BUCKETS

#: Accuracy: coarse below 0.8, every point above it, where candidates and their baselines differ.
ACCURACY_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.82, 0.84, 0.86, 0.88,
    0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0,
)  # fmt: skip
#: Cross-entropy loss of a classifier on held-out examples.
LOSS_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

OUTCOME_OK = "ok"
OUTCOME_ACTIVATION_FAILURE = "activation_failure"
OUTCOME_REFUSED = "refused"

#: (fleet, version, role) -> devices; (fleet, version) -> devices.
DeviceCounts = Callable[[], Iterable[tuple[tuple[str, str, str], int]]]
ReportingCounts = Callable[[], Iterable[tuple[tuple[str, str], int]]]


class _Snapshots(Collector):
    """Gauges computed when scraped, so a device that went silent or a generation that ended leaves no stale series."""

    def __init__(self, devices: DeviceCounts, reporting: ReportingCounts) -> None:
        self._devices = devices
        self._reporting = reporting

    def describe(self) -> Iterator[Any]:
        yield self._families()[0]
        yield self._families()[1]

    def collect(self) -> Iterator[Any]:
        devices, reporting = self._families()
        for (fleet, version, role), count in self._devices():
            devices.add_metric([fleet, version, role], count)
        for (fleet, version), count in self._reporting():
            reporting.add_metric([fleet, version], count)
        yield devices
        yield reporting

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "fedfleet_gateway_devices",
                "Devices heard from within the last check-in window, by the version they run and their role",
                labels=["fleet", "version", "role"],
            ),
            GaugeMetricFamily(
                "fedfleet_gateway_reporting_devices",
                "Distinct devices that reported health on a version in the fleet view's current generation",
                labels=["fleet", "version"],
            ),
        )


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.checkins = Counter("fedfleet_gateway_checkins", "Device check-ins answered", ["fleet"], registry=registry)
        self.health_reports = Counter(
            "fedfleet_gateway_health_reports",
            "Model health reports by version and outcome (ok, activation_failure, refused)",
            ["fleet", "version", "outcome"],
            registry=registry,
        )
        self.accuracy = Histogram(
            "fedfleet_gateway_model_accuracy",
            "On-device accuracy of the assigned model on the device's held-out examples",
            ["fleet", "version"],
            buckets=ACCURACY_BUCKETS,
            registry=registry,
        )
        self.loss = Histogram(
            "fedfleet_gateway_model_loss",
            "On-device loss of the assigned model on the device's held-out examples",
            ["fleet", "version"],
            buckets=LOSS_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "fedfleet_gateway_inference_latency_seconds",
            "On-device inference latency per example",
            ["fleet", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.activation_failures = Counter(
            "fedfleet_gateway_activation_failures",
            "Devices that could not activate their assigned version, by reason",
            ["fleet", "version", "reason"],
            registry=registry,
        )
        self.refusals = Counter(
            "fedfleet_gateway_refusals", "Calls refused, by method and reason", ["method", "reason"], registry=registry
        )
        self.watch_streams = Gauge("fedfleet_gateway_watch_streams", "Open WatchAssignment streams", registry=registry)

    def track(self, devices: DeviceCounts, reporting: ReportingCounts) -> None:
        """Export the gauges that are computed when scraped."""
        self.registry.register(_Snapshots(devices, reporting))

    def refused(self, method: str, reason: str) -> None:
        self.refusals.labels(method, reason).inc()

"""Privacy metrics for Prometheus, on an injected CollectorRegistry. Aggregates only: no device id is a label.

- ``fedfleet_privacy_job_epsilon_spent{namespace,job}`` — the job's ε(δ) after its last released round;
- ``fedfleet_privacy_job_epsilon_target{namespace,job}`` — its budget, so alerts can compare the two;
- ``fedfleet_privacy_device_epsilon`` — the distribution of cumulative per-device ε from the ledger;
- ``fedfleet_privacy_devices_exhausted`` — devices at their lifetime budget (excluded from cohorts).

The per-device distribution is a snapshot of the ledger, not a stream of observations: a device's ε moves up
between buckets, so lower buckets can shrink. That is a *gauge histogram* in OpenMetrics terms, and it is
exported as one (``_bucket`` series plus ``_gcount`` / ``_gsum``); ``histogram_quantile`` works on it as usual.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeHistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fedfleet.privacy.ledger import PrivacyLedger

DEFAULT_EPSILON_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class _DeviceEpsilonCollector(Collector):
    """Yields the last ledger snapshot as a gauge histogram."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        # (cumulative counts per bucket, the last one +Inf; sum of ε), replaced as one object so that a scrape
        # running in another thread never sees counts from one snapshot and the sum from another.
        self.snapshot: tuple[list[int], float] = ([0] * (len(self.buckets) + 1), 0.0)

    def collect(self) -> Iterator[Metric]:
        cumulative, total = self.snapshot
        le = [_le(b) for b in self.buckets] + ["+Inf"]
        yield GaugeHistogramMetricFamily(
            "fedfleet_privacy_device_epsilon",
            "Cumulative ε per device across jobs, from the privacy ledger (snapshot)",
            buckets=list(zip(le, [float(c) for c in cumulative], strict=True)),
            gsum_value=total,
        )


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class PrivacyMetrics:
    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float] = DEFAULT_EPSILON_BUCKETS) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
            raise ValueError(f"buckets must be increasing finite numbers > 0, got {list(buckets)}")
        self.registry = registry
        self.job_epsilon_spent = Gauge(
            "fedfleet_privacy_job_epsilon_spent",
            "ε(δ) the job has spent after its last released round",
            ["namespace", "job"],
            registry=registry,
        )
        self.job_epsilon_target = Gauge(
            "fedfleet_privacy_job_epsilon_target",
            "ε the job may spend in total (its targetEpsilon)",
            ["namespace", "job"],
            registry=registry,
        )
        self.devices_exhausted = Gauge(
            "fedfleet_privacy_devices_exhausted",
            "Devices whose cumulative ε reached the device budget; they are not selected",
            registry=registry,
        )
        self._device_epsilon = _DeviceEpsilonCollector(bounds)
        registry.register(self._device_epsilon)

    def set_job_epsilon(self, namespace: str, job: str, epsilon: float, target: float | None = None) -> None:
        self.job_epsilon_spent.labels(namespace=namespace, job=job).set(epsilon)
        if target is not None:
            self.job_epsilon_target.labels(namespace=namespace, job=job).set(target)

    def update_from_ledger(self, ledger: PrivacyLedger, budget: float | None) -> None:
        """Refresh the per-device histogram and the exhausted count from the ledger (no budget: 0 exhausted)."""
        values = ledger.epsilons()
        counts = np.searchsorted(np.sort(values), self._device_epsilon.buckets, side="right")
        self._device_epsilon.snapshot = ([int(c) for c in counts] + [int(values.size)], float(values.sum()))
        self.devices_exhausted.set(len(ledger.exhausted(budget)) if budget is not None else 0)

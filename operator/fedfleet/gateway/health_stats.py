"""What devices reported about the versions they run, since the fleet's view took its current generation: the
source of `fedfleet_gateway_reporting_devices` and of the health part of a fleet summary (which the embedded
runtime's `builtin` analysis provider reads).

Only accepted reports come here; a refused report is counted by reason elsewhere and never reaches these
figures. Memory is bounded: at most `max_devices` (device, version) pairs are remembered per fleet; past that,
reports still count but new devices no longer raise the distinct count, which then reads "at least".
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Per-example inference latency, seconds: fine from 0.1 ms to 1 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass
class _Tally:
    reports: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    accuracy_sum: float = 0.0
    loss_sum: float = 0.0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))


@dataclass(frozen=True)
class VersionHealth:
    version: str
    role: str
    reports: int
    reporting_devices: int
    activation_failures: int
    mean_accuracy: float  # NaN without reports: no data is never a number that passes
    mean_loss: float
    latency_p50_seconds: float
    latency_p99_seconds: float
    failures_by_reason: dict[str, int]


class GenerationHealth:
    """One fleet's reports in the current generation, by (version, role)."""

    def __init__(self, max_devices: int, generation: int = 0) -> None:
        self._max_devices = max_devices
        self.generation = generation
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._devices: dict[str, dict[str, str]] = {}  # version -> device -> role it last reported as
        self._remembered = 0

    def reset(self, generation: int) -> None:
        """A new generation of the view: what was reported about the old one no longer counts."""
        self.generation = generation
        self._tallies = {}
        self._devices = {}
        self._remembered = 0

    def record_active(
        self, version: str, role: str, device_id: str, accuracy: float, loss: float, latency_seconds: float
    ) -> None:
        tally = self._tally(version, role, device_id)
        tally.reports += 1
        tally.accuracy_sum += accuracy
        tally.loss_sum += loss
        tally.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency_seconds)] += 1

    def record_failure(self, version: str, role: str, device_id: str, reason: str) -> None:
        self._tally(version, role, device_id).failures[reason] += 1

    def reporting_devices(self, version: str) -> int:
        return len(self._devices.get(version, ()))

    def versions(self) -> list[str]:
        return sorted(self._devices)

    def summary(self) -> list[VersionHealth]:
        out = []
        for (version, role), tally in sorted(self._tallies.items()):
            devices = sum(1 for r in self._devices.get(version, {}).values() if r == role)
            n = tally.reports
            out.append(
                VersionHealth(
                    version=version,
                    role=role,
                    reports=n,
                    reporting_devices=devices,
                    activation_failures=sum(tally.failures.values()),
                    mean_accuracy=tally.accuracy_sum / n if n else math.nan,
                    mean_loss=tally.loss_sum / n if n else math.nan,
                    latency_p50_seconds=bucket_quantile(LATENCY_BUCKETS, tally.latency_counts, 0.5),
                    latency_p99_seconds=bucket_quantile(LATENCY_BUCKETS, tally.latency_counts, 0.99),
                    failures_by_reason=dict(tally.failures),
                )
            )
        return out

    def _tally(self, version: str, role: str, device_id: str) -> _Tally:
        devices = self._devices.setdefault(version, {})
        if device_id in devices or self._remembered < self._max_devices:
            self._remembered += device_id not in devices
            devices[device_id] = role
        return self._tallies.setdefault((version, role), _Tally())


def bucket_quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float:
    """The q-quantile of observations counted in buckets (counts[i] below bounds[i], the last one above all),
    interpolated linearly inside its bucket as Prometheus' histogram_quantile does; NaN without observations.
    Observations above the last bound report that bound."""
    total = sum(counts)
    if total == 0:
        return math.nan
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / count
        below += count
    return bounds[-1]

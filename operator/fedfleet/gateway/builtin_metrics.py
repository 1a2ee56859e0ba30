"""The `builtin` analysis provider: a rollout's metrics from the gateway's own health aggregates, for the
embedded runtime (`fedfleet rollout`), where there is no Prometheus.

The figures are what the gateway exports to Prometheus, read straight from its summary: per (version, role),
since the fleet's view took its current generation. The candidate's value comes from the canary cohort; the
baseline from the stable version's devices outside it (`stable`) or from the control cohort (`control`),
which Prometheus' per-version series cannot tell apart from stable. No reports give no value (NaN → None),
so a measurement without data is inconclusive, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fedfleet.api.modelrollout import Baseline, BuiltinMetricName
from fedfleet.gateway.health_stats import VersionHealth
from fedfleet.rollout.analysis import Sample

CANDIDATE_ROLES = ("canary",)
BASELINE_ROLES = {Baseline.STABLE: ("stable", "outside"), Baseline.CONTROL: ("control",)}


def builtin_sample(
    health: Iterable[VersionHealth],
    metric: BuiltinMetricName,
    candidate: str,
    stable: str | None,
    baseline: Baseline,
) -> Sample:
    rows = list(health)
    value, devices = _value(rows, metric, candidate, CANDIDATE_ROLES)
    base = None
    if baseline != Baseline.NONE and stable is not None:
        base, _ = _value(rows, metric, stable, BASELINE_ROLES[baseline])
    return Sample(value, base, devices)


def _value(
    rows: list[VersionHealth], metric: BuiltinMetricName, version: str, roles: Iterable[str]
) -> tuple[float | None, int]:
    wanted = [r for r in rows if r.version == version and r.role in tuple(roles)]
    reports = sum(r.reports for r in wanted)
    failures = sum(r.activation_failures for r in wanted)
    devices = sum(r.reporting_devices for r in wanted)
    if metric == BuiltinMetricName.ACTIVATION_FAILURE_RATE:
        attempts = reports + failures
        return (failures / attempts if attempts else None), devices
    if reports == 0:
        return None, devices

    def weighted(pick: str) -> float:
        total = 0.0
        for row in wanted:
            mean = float(getattr(row, pick))
            if row.reports and not math.isnan(mean):
                total += mean * row.reports
        return total / reports

    if metric == BuiltinMetricName.ACCURACY:
        return weighted("mean_accuracy"), devices
    if metric == BuiltinMetricName.LOSS:
        return weighted("mean_loss"), devices
    # p99 across roles: the worst cohort's p99 bounds it from above (the histograms are not merged here).
    p99 = [r.latency_p99_seconds for r in wanted if r.reports and not math.isnan(r.latency_p99_seconds)]
    return (max(p99) if p99 else None), devices

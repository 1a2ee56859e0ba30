"""ModelRollout metrics of the operator, on the operator's registry.

Labelled by the rollout's namespace and name (and metric name and result for analysis), never by device or
version digest: the series count grows with rollouts, not with fleets or releases.
"""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import CollectorRegistry, Counter, Gauge

from fedfleet.api.rollout_status import RolloutPhase


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["namespace", "rollout"]
        self.weight = Gauge(
            "fedfleet_rollout_weight", "Percent of the selected devices on the candidate", labels, registry=registry
        )
        self.step = Gauge(
            "fedfleet_rollout_step",
            "The rollout's current step (0-based; the step count once done)",
            labels,
            registry=registry,
        )
        self.phase = Gauge(
            "fedfleet_rollout_phase",
            "1 for the rollout's current phase, 0 for the others",
            [*labels, "phase"],
            registry=registry,
        )
        self.measurements = Counter(
            "fedfleet_rollout_analysis_measurements",
            "Analysis measurements taken, by metric and result (Successful, Failed, Inconclusive, Error)",
            [*labels, "metric", "result"],
            registry=registry,
        )
        self.aborts = Counter(
            "fedfleet_rollout_aborts", "Rollouts aborted, by reason", [*labels, "reason"], registry=registry
        )

    def observe(self, namespace: str, name: str, phase: RolloutPhase, step: int, weight: int) -> None:
        self.weight.labels(namespace, name).set(weight)
        self.step.labels(namespace, name).set(step)
        for each in RolloutPhase:
            self.phase.labels(namespace, name, each.value).set(1 if each == phase else 0)

    def measured(self, namespace: str, name: str, metric: str, result: str) -> None:
        self.measurements.labels(namespace, name, metric, result).inc()

    def aborted(self, namespace: str, name: str, reason: str) -> None:
        self.aborts.labels(namespace, name, reason).inc()

    def forget(self, namespace: str, name: str) -> None:
        for gauge in (self.weight, self.step):
            with suppress(KeyError):
                gauge.remove(namespace, name)
        for each in RolloutPhase:
            with suppress(KeyError):
                self.phase.remove(namespace, name, each.value)

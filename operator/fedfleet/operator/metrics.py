"""Operator metrics, on an injected registry (tests build a fresh one).

Per-job gauges are labelled with namespace and name only: nothing per device, per pod or per round, so the
series count grows with jobs, not with fleets. A deleted job's series are removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedfleet.api.status import ConditionType, FederatedJobStatus

OUTCOMES = ("success", "requeue", "error")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry  # the rollout controller's metrics join the same registry
        self.reconciliations = Counter(
            "fedfleet_operator_reconciliations",
            "FederatedJob reconciliations by outcome (success, requeue: try again soon, error)",
            ["outcome"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "fedfleet_operator_reconcile_duration_seconds",
            "Time to observe a job's children, decide and apply the plan",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.jobs = Gauge(
            "fedfleet_operator_jobs",
            "FederatedJobs whose condition is True, by condition",
            ["condition"],
            registry=registry,
        )

        def per_job(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["namespace", "name"], registry=registry)

        self.job_round = per_job("fedfleet_job_round", "Rounds completed")
        self.job_target = per_job("fedfleet_job_rounds_target", "Rounds the job runs")
        self.job_churn = per_job("fedfleet_job_churn_rate", "Share of invitations dropped or late")
        self.job_epsilon = per_job("fedfleet_job_epsilon_spent", "Differential-privacy ε spent")
        self.job_accuracy = per_job("fedfleet_job_accuracy", "Latest server-side test accuracy")
        for outcome in OUTCOMES:
            self.reconciliations.labels(outcome)  # export zeros, so rates exist before the first event
        self._conditions: dict[tuple[str, str], frozenset[str]] = {}

    @contextmanager
    def timed(self) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.reconcile_seconds.observe(perf_counter() - start)

    def outcome(self, outcome: str) -> None:
        self.reconciliations.labels(outcome).inc()

    def observe_job(self, namespace: str, name: str, target_rounds: int, status: FederatedJobStatus) -> None:
        key = (namespace, name)
        self._conditions[key] = frozenset(c.type for c in status.conditions if c.status == "True")
        self._refresh_conditions()
        self.job_target.labels(namespace, name).set(target_rounds)
        for gauge, value in (
            (self.job_round, status.round),
            (self.job_churn, status.churn),
            (self.job_epsilon, status.epsilon_spent),
            (self.job_accuracy, status.accuracy),
        ):
            if value is not None:
                gauge.labels(namespace, name).set(value)

    def forget_job(self, namespace: str, name: str) -> None:
        self._conditions.pop((namespace, name), None)
        self._refresh_conditions()
        for gauge in (self.job_round, self.job_target, self.job_churn, self.job_epsilon, self.job_accuracy):
            with suppress(KeyError):
                gauge.remove(namespace, name)

    def _refresh_conditions(self) -> None:
        for kind in ConditionType:
            self.jobs.labels(kind.value).set(sum(1 for true in self._conditions.values() if kind.value in true))

"""Operator metrics on a fresh registry: outcomes, latency, jobs by condition, per-job gauges."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from fedfleet.api.status import FederatedJobStatus
from fedfleet.operator.metrics import OperatorMetrics


def _status(conditions: dict[str, str], **progress: float) -> FederatedJobStatus:
    items = [
        {"type": kind, "status": value, "reason": "R", "lastTransitionTime": "2030-01-01T00:00:00Z"}
        for kind, value in conditions.items()
    ]
    return FederatedJobStatus.model_validate({"conditions": items, **progress})


def test_outcomes_and_latency_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    assert registry.get_sample_value("fedfleet_operator_reconciliations_total", {"outcome": "error"}) == 0
    with metrics.timed():
        metrics.outcome("success")
    metrics.outcome("success")
    metrics.outcome("requeue")
    assert registry.get_sample_value("fedfleet_operator_reconciliations_total", {"outcome": "success"}) == 2
    assert registry.get_sample_value("fedfleet_operator_reconciliations_total", {"outcome": "requeue"}) == 1
    assert registry.get_sample_value("fedfleet_operator_reconcile_duration_seconds_count") == 1


def test_jobs_by_condition_and_per_job_gauges() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.observe_job("a", "one", 10, _status({"Ready": "True", "Running": "True"}, round=4, churn=0.25))
    metrics.observe_job("b", "two", 5, _status({"Ready": "True", "Complete": "True"}, round=5, epsilonSpent=1.5))

    def jobs(condition: str) -> float | None:
        return registry.get_sample_value("fedfleet_operator_jobs", {"condition": condition})

    assert (jobs("Ready"), jobs("Running"), jobs("Complete"), jobs("Failed")) == (2, 1, 1, 0)
    assert registry.get_sample_value("fedfleet_job_round", {"namespace": "a", "name": "one"}) == 4
    assert registry.get_sample_value("fedfleet_job_rounds_target", {"namespace": "a", "name": "one"}) == 10
    assert registry.get_sample_value("fedfleet_job_churn_rate", {"namespace": "a", "name": "one"}) == 0.25
    assert registry.get_sample_value("fedfleet_job_epsilon_spent", {"namespace": "b", "name": "two"}) == 1.5
    # A job that moves on is counted under its new conditions only.
    metrics.observe_job("a", "one", 10, _status({"Ready": "False", "Failed": "True"}, round=4))
    assert (jobs("Ready"), jobs("Running"), jobs("Failed")) == (1, 0, 1)

    metrics.forget_job("a", "one")
    assert registry.get_sample_value("fedfleet_job_round", {"namespace": "a", "name": "one"}) is None
    assert jobs("Failed") == 0
    metrics.forget_job("a", "one")  # twice is fine (kopf may call the delete handler again)


def test_labels_are_namespace_and_name_only() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.observe_job("a", "one", 3, _status({"Ready": "True"}, round=1, accuracy=0.5))
    text = generate_latest(registry).decode()
    for line in text.splitlines():
        if line.startswith("fedfleet_job_"):
            labels = line[line.index("{") + 1 : line.index("}")]
            assert {pair.split("=")[0] for pair in labels.split(",")} == {"namespace", "name"}, line

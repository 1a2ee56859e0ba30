"""The aggregator's Prometheus metrics, registered on an injected CollectorRegistry.

Names start with `fedfleet_`. No device id is ever a label: per-device quantities are counts or histograms.
Counters that describe the whole job (rounds, participants, rejections) are seeded from the checkpoint's
totals on start, so a restarted aggregator neither loses nor double-counts the rounds it already finished.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from fedfleet.engine.types import Outcome, RejectReason, RoundResult

_ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class AggregatorMetrics:
    def __init__(self, registry: CollectorRegistry, *, process: bool = True) -> None:
        self.registry = registry
        self.round_current = Gauge(
            "fedfleet_round_current", "Number of the round in progress, or of the last one started", registry=registry
        )
        self.rounds_completed = Gauge("fedfleet_rounds_completed", "Rounds finished so far", registry=registry)
        self.rounds_target = Gauge("fedfleet_rounds_target", "Rounds the job runs", registry=registry)
        self.rounds = Counter("fedfleet_rounds", "Finished rounds by result", ["result"], registry=registry)
        self.round_duration = Histogram(
            "fedfleet_round_duration_seconds",
            "Wall time from a round's start to its close",
            buckets=_ROUND_BUCKETS,
            registry=registry,
        )
        self.devices_checked_in = Gauge(
            "fedfleet_devices_checked_in", "Devices that checked in and were heard from recently", registry=registry
        )
        self.devices_available = Gauge(
            "fedfleet_devices_available", "Checked-in devices that consent and can train now", registry=registry
        )
        self.round_participants = Gauge(
            "fedfleet_round_participants",
            "Invitees of the last finished round by outcome",
            ["outcome"],
            registry=registry,
        )
        self.participants = Counter(
            "fedfleet_participants", "Invitations over the job by outcome", ["outcome"], registry=registry
        )
        self.churn_rate = Gauge(
            "fedfleet_churn_rate", "Share of invitations that ended dropped or late, over the job", registry=registry
        )
        self.bytes_received = Counter(
            "fedfleet_received_bytes", "Update payload bytes received from devices", registry=registry
        )
        self.bytes_sent = Counter("fedfleet_sent_bytes", "Model payload bytes sent to devices", registry=registry)
        self.rejected = Counter(
            "fedfleet_updates_rejected", "Updates refused, by reason", ["reason"], registry=registry
        )
        self.aggregation_seconds = Histogram(
            "fedfleet_aggregation_seconds",
            "Time to close a round: aggregate and step the server optimizer",
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "fedfleet_rpc_duration_seconds",
            "Server-side duration of device calls",
            ["method"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.malformed = Counter(
            "fedfleet_malformed_messages",
            "Messages that did not parse as their method's message, by method",
            ["method"],
            registry=registry,
        )
        self.model_accuracy = Gauge(
            "fedfleet_model_accuracy", "Server-side test accuracy of the global model", registry=registry
        )
        self.model_loss = Gauge("fedfleet_model_loss", "Server-side test loss of the global model", registry=registry)
        self.secagg_rounds = Counter(
            "fedfleet_secagg_rounds", "Secure-aggregation rounds by result", ["result"], registry=registry
        )
        self.secagg_stage_seconds = Histogram(
            "fedfleet_secagg_stage_seconds",
            "Wall time of each secure-aggregation stage, from opening to its reply messages",
            ["stage"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.secagg_excluded = Counter(
            "fedfleet_secagg_excluded",
            "Devices that left a secure-aggregation round, by stage and reason",
            ["stage", "reason"],
            registry=registry,
        )
        if process:
            ProcessCollector(namespace="fedfleet", registry=registry)
        # Every label value exists from the start, so a scrape shows zeros instead of absent series.
        for outcome in Outcome:
            self.participants.labels(outcome.value)
            self.round_participants.labels(outcome.value)
        for reason in RejectReason:
            self.rejected.labels(reason.value)
        for result in ("succeeded", "failed"):
            self.rounds.labels(result)

    def seed(self, target_rounds: int, completed: int, totals: dict[str, Any]) -> None:
        """Start from the job's figures so far (a fresh job or one resumed from its checkpoint)."""
        self.rounds_target.set(target_rounds)
        self.rounds_completed.set(completed)
        self.round_current.set(completed)
        self.rounds.labels("succeeded").inc(int(totals.get("rounds_succeeded", 0)))
        self.rounds.labels("failed").inc(int(totals.get("rounds_failed", 0)))
        for outcome, n in totals.get("outcomes", {}).items():
            self.participants.labels(outcome).inc(int(n))
        for reason, n in totals.get("rejected", {}).items():
            self.rejected.labels(reason).inc(int(n))

    def round_finished(self, result: RoundResult, duration: float, churn_rate: float) -> None:
        self.rounds_completed.set(result.round)
        self.rounds.labels("succeeded" if result.succeeded else "failed").inc()
        self.round_duration.observe(duration)
        for outcome in Outcome:
            n = result.count(outcome)
            self.round_participants.labels(outcome.value).set(n)
            self.participants.labels(outcome.value).inc(n)
        self.churn_rate.set(churn_rate)

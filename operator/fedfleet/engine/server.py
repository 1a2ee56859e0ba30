"""The server side of a federated job: global model, server optimizer, and the rounds that update them.

Transport-agnostic: the embedded runtime and the gRPC aggregator both call `start_round`, feed the returned
`TrainingRound`, and hand its result to `finish_round`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedfleet.api.aggregator_config import CLUSTER_ONLY_KEYS as _RUNTIME_ONLY_FIELDS  # what the digest ignores
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.engine.cohort import select_cohort
from fedfleet.engine.round import RoundConfig, TrainingRound
from fedfleet.engine.seeding import Purpose, stream
from fedfleet.engine.types import Outcome, RoundResult
from fedfleet.models.vector import Vector
from fedfleet.persist.checkpoint import Checkpoint, CheckpointError
from fedfleet.strategies.factory import build_strategy

if TYPE_CHECKING:  # the caller builds it; the engine never imports the DP libraries itself
    from fedfleet.privacy.job import JobPrivacy


def spec_digest(spec: FederatedJobSpec) -> str:
    """A stable fingerprint of everything that determines the job's result."""
    fields = {k: v for k, v in spec.model_dump(mode="json", by_alias=True).items() if k not in _RUNTIME_ONLY_FIELDS}
    canonical = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def churn(outcomes: dict[str, int]) -> float:
    """Devices lost during rounds, over the devices those rounds waited for (every invitee but the surplus)."""
    waited_for = sum(outcomes.values()) - outcomes.get(Outcome.SURPLUS.value, 0)
    lost = outcomes.get(Outcome.DROPPED.value, 0) + outcomes.get(Outcome.LATE.value, 0)
    return lost / waited_for if waited_for else 0.0


@dataclass
class Totals:
    """Counters over the whole job, kept in the checkpoint so a resumed job reports the same figures."""

    rounds_succeeded: int = 0
    rounds_failed: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})
    rejected: dict[str, int] = field(default_factory=dict)
    bytes_received: int = 0
    bytes_sent: int = 0

    def add(self, result: RoundResult, bytes_sent: int) -> None:
        if result.succeeded:
            self.rounds_succeeded += 1
        else:
            self.rounds_failed += 1
        for outcome in result.outcomes.values():
            self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1
        for reason, n in result.rejected_reasons.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n
        self.bytes_received += result.bytes_received
        self.bytes_sent += bytes_sent

    @property
    def churn_rate(self) -> float:
        """Share of the invitees a round waited for that it lost (dropped or late); surplus is not a loss."""
        return churn(self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "rounds_succeeded": self.rounds_succeeded,
            "rounds_failed": self.rounds_failed,
            "outcomes": dict(self.outcomes),
            "rejected": dict(self.rejected),
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Totals:
        totals = cls()
        totals.rounds_succeeded = int(data.get("rounds_succeeded", 0))
        totals.rounds_failed = int(data.get("rounds_failed", 0))
        totals.outcomes.update({k: int(v) for k, v in data.get("outcomes", {}).items()})
        totals.rejected = {k: int(v) for k, v in data.get("rejected", {}).items()}
        totals.bytes_received = int(data.get("bytes_received", 0))
        totals.bytes_sent = int(data.get("bytes_sent", 0))
        return totals


class FederatedServer:
    def __init__(self, spec: FederatedJobSpec, initial_weights: Vector, privacy: JobPrivacy | None = None) -> None:
        self.spec = spec
        self.privacy = privacy
        self.digest = spec_digest(spec)
        self.rule, self.optimizer = build_strategy(spec.aggregation)
        self.weights: Vector = np.array(initial_weights, dtype=np.float32)
        self.round = 0  # the last finished round
        self.totals = Totals()

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    @property
    def epsilon(self) -> float | None:
        """ε(δ) the job has spent, when it runs with differential privacy."""
        return self.privacy.epsilon if self.privacy is not None else None

    @property
    def done(self) -> bool:
        return self.round >= self.spec.rounds

    def start_round(
        self,
        available: list[str],
        now: float,
        max_update_bytes: int | None = None,
        excluded: frozenset[str] = frozenset(),
    ) -> TrainingRound:
        """Open the next round with a cohort drawn from the available devices (minus `excluded`).

        With differential privacy on, devices without ε budget left are excluded too, and the round is refused
        (PrivacyBudgetExceeded, DevicesExhausted) before anything changes if it must not run.
        """
        number = self.round + 1
        cohort_spec = self.spec.cohort
        rule = self.rule
        if self.privacy is not None:
            excluded = excluded | self.privacy.excluded_devices()
            self.privacy.before_round(sum(1 for d in available if d not in excluded))
            rule = self.privacy.rule_for_round(stream(self.spec.seed, Purpose.DP_NOISE, number)) or self.rule
        candidates = [d for d in available if d not in excluded]
        cohort = select_cohort(
            candidates,
            cohort_spec.clients_per_round,
            cohort_spec.over_selection,
            stream(self.spec.seed, Purpose.COHORT, number),
        )
        config = RoundConfig(
            number=number,
            cohort=tuple(cohort),
            target_reports=cohort_spec.clients_per_round,
            min_reports=cohort_spec.effective_min_reports,
            deadline=now + cohort_spec.round_deadline_seconds,
            dim=self.dim,
            max_update_bytes=max_update_bytes,
        )
        return TrainingRound(config, rule)

    def finish_round(self, training_round: TrainingRound) -> RoundResult:
        """Close the round and, if it succeeded, step the global model with the server optimizer."""
        if training_round.number != self.round + 1:
            raise ValueError(f"round {training_round.number} cannot finish after round {self.round}")
        result = training_round.close()
        if result.aggregate is not None:
            self._step(result)
        self.round = result.round
        self.totals.add(result, bytes_sent=len(training_round.config.cohort) * int(self.weights.nbytes))
        return result

    def _step(self, result: RoundResult) -> None:
        """Apply the aggregate with the server optimizer, unless that would make the model non-finite.

        Accepted updates are finite, but a blown-up model plus a large step can still overflow float32; then
        the round fails and both the model and the optimizer's state stay as they were.
        """
        assert result.aggregate is not None
        saved_state = self.optimizer.state_dict()
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected just below
            stepped = self.optimizer.apply(self.weights, result.aggregate)
        if np.isfinite(stepped).all():
            self.weights = stepped
            if self.privacy is not None:
                participants = [d for d, o in result.outcomes.items() if o == Outcome.COMPLETED]
                self.privacy.after_release(result.round, participants)
            return
        self.optimizer.load_state_dict(saved_state)
        result.aggregate = None
        result.failure = "the server step would make the model non-finite; the model is unchanged"

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            round=self.round,
            weights=self.weights.copy(),
            optimizer_state=self.optimizer.state_dict(),
            spec_digest=self.digest,
            totals=self.totals.to_json(),
            extra={"privacy": self.privacy.state_dict()} if self.privacy is not None else {},
        )

    def restore(self, ckpt: Checkpoint) -> None:
        if ckpt.spec_digest != self.digest:
            raise CheckpointError(
                "the checkpoint was written for a different job spec; start a new run instead of resuming"
            )
        if ckpt.weights.shape != self.weights.shape:
            raise CheckpointError(f"checkpoint has {ckpt.weights.shape[0]} parameters, the model has {self.dim}")
        self.weights = ckpt.weights.copy()
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.round = ckpt.round
        self.totals = Totals.from_json(ckpt.totals)
        if self.privacy is not None and "privacy" in ckpt.extra:
            self.privacy.load_state_dict(ckpt.extra["privacy"])

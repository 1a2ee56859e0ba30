"""One training round as a state machine, independent of how updates travel.

The embedded runtime drives it in simulated time; the gRPC aggregator drives it on the wall clock. Both get
the same rules: only the invited cohort may report, once each, for this round, with a well-formed finite
update of the model's size; reports after the round closed or after its deadline are late and discarded;
the round succeeds when at least `min_reports` updates were accepted. A rejected update is counted by reason
and otherwise leaves the round exactly as if it had never arrived.

What happens to an invitee that has not reported when the round closes is decided only from what a server
can see: if the round filled, it is surplus (over-selection invited it as a spare); otherwise it is dropped
— a device that left and one still training past the deadline look the same to the server.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from fedfleet.engine.types import ModelUpdate, Outcome, RejectReason, RoundResult
from fedfleet.models.vector import Vector
from fedfleet.strategies.base import AggregationRule


class UpdateRejected(Exception):
    """The update breaks a rule of the round. The round is unchanged; `reason` is a metric label."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class RoundConfig:
    number: int
    cohort: tuple[str, ...]
    target_reports: int  # the round may close as soon as this many updates were accepted
    min_reports: int  # fewest accepted updates that make the round a success at its deadline
    deadline: float  # on the caller's clock (simulated or wall seconds)
    dim: int  # length of the flat parameter vector
    max_update_bytes: int | None = None
    max_examples: int = 10**9  # a device claiming more examples than this is lying about its weight


class TrainingRound:
    def __init__(self, config: RoundConfig, rule: AggregationRule) -> None:
        if config.min_reports > config.target_reports:
            raise ValueError("min_reports must not exceed target_reports")
        self.config = config
        self._accumulator = rule.accumulator(config.dim)
        self._cohort = frozenset(config.cohort)
        self._outcomes: dict[str, Outcome] = {}
        self._rejected_devices: set[str] = set()
        self._rejected_reasons: dict[str, int] = {}
        self._examples = 0
        self._bytes = 0
        self._loss_sum = 0.0
        self._loss_weight = 0
        self._closed: RoundResult | None = None

    @property
    def number(self) -> int:
        return self.config.number

    @property
    def accepted(self) -> int:
        return self._accumulator.count

    @property
    def is_full(self) -> bool:
        """Enough updates arrived to close the round before its deadline."""
        return self.accepted >= self.config.target_reports

    @property
    def is_closed(self) -> bool:
        return self._closed is not None

    def pending(self) -> list[str]:
        """Invitees that have neither reported nor been written off."""
        return [d for d in self.config.cohort if d not in self._outcomes]

    def submit(self, update: ModelUpdate, now: float) -> Outcome:
        """Fold in one device's update. Returns COMPLETED, SURPLUS (the round was already full) or LATE (after
        its deadline or close); raises UpdateRejected for a bad one."""
        self._check(update)
        self._bytes += update.nbytes
        if self._closed is not None or now > self.config.deadline:
            self._outcomes[update.device_id] = Outcome.LATE
            return Outcome.LATE
        if self.is_full:
            self._outcomes[update.device_id] = Outcome.SURPLUS
            return Outcome.SURPLUS
        self._accumulator.add(update.delta, update.num_examples)
        self._outcomes[update.device_id] = Outcome.COMPLETED
        self._examples += update.num_examples
        if np.isfinite(update.train_loss):
            self._loss_sum += update.train_loss * update.num_examples
            self._loss_weight += update.num_examples
        return Outcome.COMPLETED

    def admit(self, device_id: str, round_number: int) -> None:
        """Check the sender of an update before its payload is read: in the cohort, this round, first report.

        Raises UpdateRejected (counted like any rejection) so a transport can refuse a stream at its header.
        """
        try:
            validate_sender(device_id, round_number, self.config, self._cohort, self._outcomes)
        except UpdateRejected as rejection:
            self._count_rejection(device_id, rejection)
            raise

    def reject(self, device_id: str, rejection: UpdateRejected) -> None:
        """Count an update the transport refused before it became a ModelUpdate (corrupt stream, wrong layout).

        Like every rejection, it leaves the aggregate and the device's chance to report untouched.
        """
        self._count_rejection(device_id, rejection)

    def report_late(self, device_id: str, nbytes: int) -> None:
        """Record a report that arrived after its stage closed without materialising it (secure rounds)."""
        if device_id in self._cohort and device_id not in self._outcomes:
            self._outcomes[device_id] = Outcome.LATE
            self._bytes += nbytes

    def close(self) -> RoundResult:
        """Close the round (idempotent): aggregate if enough updates were accepted, else fail it."""
        if self._closed is not None:
            return self._closed
        aggregate: Vector | None = None
        failure = None
        if self.accepted >= self.config.min_reports:
            aggregate = self._accumulator.result()
        else:
            failure = f"only {self.accepted} of the {self.config.min_reports} required reports arrived in time"
        return self._finish(aggregate, failure)

    def close_secure(
        self, aggregate: Vector | None, included: Collection[str], num_examples: int, failure: str | None, nbytes: int
    ) -> RoundResult:
        """Close a round whose updates went through secure aggregation: the transport computed the aggregate of
        the `included` devices' updates (it never saw one alone), or the reason there is none."""
        if self._closed is not None:
            raise ValueError(f"round {self.number} is already closed")
        if (aggregate is None) == (failure is None):
            raise ValueError("a secure round closes with an aggregate or with a failure, not both or neither")
        if aggregate is not None and (aggregate.dtype != np.float32 or aggregate.shape != (self.config.dim,)):
            raise ValueError(f"aggregate must be float32 of shape ({self.config.dim},)")
        if aggregate is not None and len(included) < self.config.min_reports:
            raise ValueError(f"{len(included)} included devices are fewer than min_reports={self.config.min_reports}")
        for device in included:
            if device not in self._cohort:
                raise ValueError(f"device {device} is not in round {self.number}'s cohort")
            if aggregate is not None:
                self._outcomes.setdefault(device, Outcome.COMPLETED)
        self._examples = num_examples
        self._bytes += nbytes
        return self._finish(aggregate, failure)

    def _finish(self, aggregate: Vector | None, failure: str | None) -> RoundResult:
        outcomes = dict(self._outcomes)
        completed = sum(1 for o in outcomes.values() if o == Outcome.COMPLETED)
        unreported = Outcome.SURPLUS if completed >= self.config.target_reports else Outcome.DROPPED
        for device in self.config.cohort:
            if device not in outcomes:
                outcomes[device] = Outcome.REJECTED if device in self._rejected_devices else unreported
        self._closed = RoundResult(
            round=self.number,
            aggregate=aggregate,
            outcomes=outcomes,
            rejected_reasons=dict(self._rejected_reasons),
            num_examples=self._examples,
            bytes_received=self._bytes,
            train_loss=self._loss_sum / self._loss_weight if self._loss_weight else float("nan"),
            failure=failure,
        )
        return self._closed

    def _check(self, update: ModelUpdate) -> None:
        try:
            validate_update(update, self.config, self._cohort, self._outcomes)
        except UpdateRejected as rejection:
            self._count_rejection(update.device_id, rejection)
            raise

    def _count_rejection(self, device_id: str, rejection: UpdateRejected) -> None:
        self._rejected_reasons[rejection.reason] = self._rejected_reasons.get(rejection.reason, 0) + 1
        if device_id in self._cohort and device_id not in self._outcomes:
            self._rejected_devices.add(device_id)


def validate_update(
    update: ModelUpdate, config: RoundConfig, cohort: frozenset[str], outcomes: dict[str, Outcome]
) -> None:
    """Every rule an update must meet before it may touch the aggregate, cheapest first."""
    validate_sender(update.device_id, update.round, config, cohort, outcomes)
    delta = update.delta
    if config.max_update_bytes is not None and delta.nbytes > config.max_update_bytes:
        raise UpdateRejected(
            RejectReason.TOO_LARGE, f"update is {delta.nbytes} bytes, the limit is {config.max_update_bytes}"
        )
    if delta.dtype != np.float32:
        raise UpdateRejected(RejectReason.DTYPE, f"update dtype is {delta.dtype}, expected float32")
    if delta.ndim != 1 or delta.shape[0] != config.dim:
        raise UpdateRejected(RejectReason.SHAPE, f"update has shape {delta.shape}, expected ({config.dim},)")
    if not 0 < update.num_examples <= config.max_examples:
        raise UpdateRejected(
            RejectReason.BAD_WEIGHT,
            f"num_examples must be in 1..{config.max_examples}, got {update.num_examples}",
        )
    if not np.isfinite(delta).all():
        raise UpdateRejected(RejectReason.NON_FINITE, "update contains NaN or Inf")


def validate_sender(
    device_id: str, round_number: int, config: RoundConfig, cohort: frozenset[str], outcomes: dict[str, Outcome]
) -> None:
    """The rules about who reports: an invitee of this round, reporting for the first time."""
    if device_id not in cohort:
        raise UpdateRejected(RejectReason.NOT_IN_COHORT, f"device {device_id} is not in round {config.number}'s cohort")
    if round_number != config.number:
        raise UpdateRejected(
            RejectReason.WRONG_ROUND,
            f"update is for round {round_number}, the current round is {config.number}",
        )
    if device_id in outcomes:
        raise UpdateRejected(RejectReason.DUPLICATE, f"device {device_id} already reported in round {config.number}")

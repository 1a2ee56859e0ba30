"""Values the round engine passes around. Model parameters are one flat float32 vector."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from fedfleet.models.vector import Vector


@dataclass(frozen=True)
class ModelUpdate:
    """What one device reports for one training round: the change it made to the global model."""

    device_id: str
    round: int
    num_examples: int
    delta: Vector  # local weights minus the global weights the device started from
    train_loss: float = float("nan")

    @property
    def nbytes(self) -> int:
        return int(self.delta.nbytes)


@dataclass(frozen=True)
class EvaluationReport:
    """A device's evaluation of the global model on its held-out data."""

    device_id: str
    round: int
    num_examples: int
    loss: float
    accuracy: float


class Outcome(StrEnum):
    """What became of one invited device in one round."""

    COMPLETED = "completed"  # its update was aggregated
    DROPPED = "dropped"  # it never reported (left, crashed, lost connectivity)
    LATE = "late"  # it reported after the round closed; the update was discarded
    SURPLUS = "surplus"  # still working when the round filled: over-selection, not a loss
    REJECTED = "rejected"  # its update failed validation and was discarded


class RejectReason(StrEnum):
    NOT_IN_COHORT = "not_in_cohort"
    WRONG_ROUND = "wrong_round"
    DUPLICATE = "duplicate"
    SHAPE = "shape"
    DTYPE = "dtype"
    LAYOUT = "layout"  # tensor names of the payload do not match the model's
    NON_FINITE = "non_finite"
    BAD_WEIGHT = "bad_weight"
    TOO_LARGE = "too_large"
    CORRUPT = "corrupt"
    ROUND_CLOSED = "round_closed"
    SECURE_ONLY = "secure_only"  # a plaintext update in a round that runs secure aggregation
    SECAGG_MALFORMED = "secagg_malformed"  # a secure-aggregation message failed validation
    STALLED = "stalled"  # the upload stream sent nothing for longer than the idle timeout
    BUSY = "busy"  # another upload from the same device for the same round is still open


@dataclass
class RoundResult:
    """The closed round: the aggregate (None if the round failed) and what happened to each invitee."""

    round: int
    aggregate: Vector | None
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    num_examples: int = 0
    bytes_received: int = 0
    train_loss: float = float("nan")
    failure: str | None = None  # why the round failed, when it did

    @property
    def succeeded(self) -> bool:
        return self.aggregate is not None

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

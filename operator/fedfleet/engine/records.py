"""The per-round record that `metrics.jsonl` holds: one line per closed round, the same for every transport."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedfleet.engine.types import Outcome, RoundResult
from fedfleet.persist.atomic import atomic_write_text


@dataclass(frozen=True)
class RoundRecord:
    round: int
    succeeded: bool
    accuracy: float | None  # server-side test accuracy of the model after this round
    loss: float | None
    train_loss: float | None  # example-weighted mean of the devices' local training loss
    federated_accuracy: float | None  # devices' evaluation on their held-out data, when run this round
    federated_loss: float | None
    invited: int
    participants: int  # updates aggregated
    dropped: int  # invitees lost during the round: no report by its deadline
    late: int  # reports that arrived after the round closed
    rejected: int
    bytes_sent: int  # model downloads to the invited devices
    bytes_received: int  # update uploads, late ones included
    sim_seconds: float  # simulated duration of the round
    wall_seconds: float
    failure: str | None = None
    epsilon: float | None = None  # ε(δ) spent by the job after this round, with differential privacy on
    surplus: int = 0  # invitees still working when the round filled: over-selection did its job, nobody was lost

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> RoundRecord:
        data: dict[str, Any] = json.loads(line)
        return cls(**data)

    @property
    def lost(self) -> int:
        """Invitees the round waited for in vain (churn): dropped or late, never the surplus."""
        return self.dropped + self.late


def read_records(path: Path) -> list[RoundRecord]:
    if not path.exists():
        return []
    return [RoundRecord.from_json(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_records(path: Path, last_round: int) -> list[RoundRecord]:
    """Keep the records up to the checkpointed round; a crash may have left one record past it."""
    kept = [r for r in read_records(path) if r.round <= last_round]
    atomic_write_text(path, "".join(r.to_json() + "\n" for r in kept))
    return kept


def append_record(path: Path, record: RoundRecord) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(record.to_json() + "\n")


@dataclass(frozen=True)
class Evaluation:
    """A model's loss and accuracy on some examples: the server's test split, or devices' held-out data."""

    loss: float
    accuracy: float
    num_examples: int


def record_from_result(
    result: RoundResult,
    *,
    invited: int,
    dim: int,
    evaluation: Evaluation | None,
    federated: Evaluation | None,
    sim_seconds: float,
    wall_seconds: float,
    epsilon: float | None,
) -> RoundRecord:
    """The metrics.jsonl line of a closed round; the same for the embedded runtime and the aggregator."""
    return RoundRecord(
        round=result.round,
        succeeded=result.succeeded,
        accuracy=evaluation.accuracy if evaluation else None,
        loss=_finite(evaluation.loss) if evaluation else None,
        train_loss=_finite(result.train_loss),
        federated_accuracy=federated.accuracy if federated else None,
        federated_loss=_finite(federated.loss) if federated else None,
        invited=invited,
        participants=result.count(Outcome.COMPLETED),
        dropped=result.count(Outcome.DROPPED),
        late=result.count(Outcome.LATE),
        rejected=result.count(Outcome.REJECTED),
        surplus=result.count(Outcome.SURPLUS),
        bytes_sent=invited * dim * 4,  # every invitee downloads the float32 model
        bytes_received=result.bytes_received,
        sim_seconds=round(sim_seconds, 3),
        wall_seconds=round(wall_seconds, 4),
        failure=result.failure,
        epsilon=round(epsilon, 6) if epsilon is not None else None,
    )


def _finite(value: float | None) -> float | None:
    # JSON has no NaN: a loss that could not be computed is absent.
    return value if value is not None and math.isfinite(value) else None

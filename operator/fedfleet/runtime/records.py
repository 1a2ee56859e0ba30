"""The per-round record that `metrics.jsonl` holds, and how a run's directory is laid out."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedfleet.persist.atomic import atomic_write_text


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.npz"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def plot(self) -> Path:
        return self.root / "report.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def manifest(self) -> Path:
        return self.root / "job.yaml"

    @property
    def run_id(self) -> Path:
        return self.root / "run-id"


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
    dropped: int
    late: int
    rejected: int
    bytes_sent: int  # model downloads to the invited devices
    bytes_received: int  # update uploads, late ones included
    sim_seconds: float  # simulated duration of the round
    wall_seconds: float
    failure: str | None = None
    epsilon: float | None = None  # ε(δ) spent by the job after this round, with differential privacy on

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> RoundRecord:
        data: dict[str, Any] = json.loads(line)
        return cls(**data)


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

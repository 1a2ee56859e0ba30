"""Where a run keeps its files: one directory, the same layout for `fedfleet run` and the aggregator's state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoint(self) -> Path:
        """The server's state after the last finished round, with every round's record inside it."""
        return self.root / "checkpoint.npz"

    @property
    def metrics(self) -> Path:
        """One JSON line per round: a readable copy of the records, rebuilt from the checkpoint on resume."""
        return self.root / "metrics.jsonl"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def artifact(self) -> Path:
        """The final model in the published format (models/artifact.py), written once before it is published:
        a restarted aggregator publishes these very bytes again, so the digest a job reports never changes."""
        return self.root / "model.artifact"

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

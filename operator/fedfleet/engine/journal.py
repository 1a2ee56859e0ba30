"""The run journal: one directory per run, where each round is committed as one atomic step, and the typed
reason the run ended.

A round's record travels inside its checkpoint: `commit` writes the checkpoint (server state plus every
record so far) atomically, then appends the same record to `metrics.jsonl`, a readable copy. A crash at any
moment leaves either the previous round or this one committed, never half of it: on resume the journal
rewrites `metrics.jsonl` from the checkpoint, so no round is lost or counted twice. A run killed before its
first checkpoint resumes from round 0.

Both transports — the embedded runtime and the gRPC aggregator — keep their run in a journal, so their
directory rules, run ids and summaries cannot disagree.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedfleet.engine.records import RoundRecord, read_records
from fedfleet.persist.atomic import atomic_write_text
from fedfleet.persist.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedfleet.persist.run_dir import RunPaths

#: Key of the records inside a checkpoint's JSON extras.
RECORDS_KEY = "records"


class RunExistsError(Exception):
    """The output directory already holds a run and the user did not ask to resume it."""


class EndKind(StrEnum):
    ROUNDS_COMPLETED = "RoundsCompleted"  # every planned round ran
    PRIVACY_BUDGET_EXHAUSTED = "PrivacyBudgetExhausted"  # the next round would overspend ε; a success so far
    INTERRUPTED = "Interrupted"  # stopped from outside (signal, shutdown); resuming continues it


@dataclass(frozen=True)
class RunEnd:
    """Why a run stopped. `complete` runs are finished for good; an interrupted one is resumed."""

    kind: EndKind
    message: str
    after_round: int

    @property
    def complete(self) -> bool:
        return self.kind != EndKind.INTERRUPTED

    @property
    def early_stop(self) -> str | None:
        """The reason a complete run ended before its last planned round, as the summary states it."""
        if self.kind == EndKind.PRIVACY_BUDGET_EXHAUSTED:
            return f"{self.kind.value}: {self.message}"
        return None


class RunJournal:
    def __init__(self, root: Path) -> None:
        self.paths = RunPaths(root)
        self.records: list[RoundRecord] = []

    def prepare(self, resume: bool) -> Checkpoint | None:
        """Start a new run or continue this directory's; returns the checkpoint to restore, if any.

        Never silently overwrites an earlier run: without `resume`, a directory holding one is refused.
        """
        paths = self.paths
        ckpt = load_checkpoint(paths.checkpoint)
        if not resume and (ckpt is not None or _has_content(paths.metrics)):
            where = f" (round {ckpt.round})" if ckpt is not None else ""
            raise RunExistsError(f"{paths.root} already holds a run{where}; pass --resume or choose another --out")
        paths.root.mkdir(parents=True, exist_ok=True)
        self.run_id()
        self.records = self._committed_records(ckpt)
        # The readable copy follows the checkpoint: rounds past it (a crash after the checkpoint of the round
        # before) run again, and a record the crash kept from reaching metrics.jsonl comes back.
        atomic_write_text(paths.metrics, "".join(r.to_json() + "\n" for r in self.records))
        _remove_stale_temporaries(paths.root)
        return ckpt

    def run_id(self) -> str:
        """This directory's run id, created on first use: the privacy ledger's key, so a resumed run never
        charges a device twice for a round, while a new run of the same job is charged."""
        path = self.paths.run_id
        if path.exists():
            existing = path.read_text(encoding="utf-8").strip()
            if existing:
                return existing
        path.parent.mkdir(parents=True, exist_ok=True)
        new = uuid.uuid4().hex
        atomic_write_text(path, new)
        return new

    def commit(self, ckpt: Checkpoint, record: RoundRecord) -> None:
        """Commit one round: its checkpoint and its record in one atomic write, then the readable copy."""
        records = [*self.records, record]
        ckpt.extra = {**ckpt.extra, RECORDS_KEY: [asdict(r) for r in records]}
        save_checkpoint(self.paths.checkpoint, ckpt)
        self.records = records
        with self.paths.metrics.open("a", encoding="utf-8") as handle:
            handle.write(record.to_json() + "\n")

    def write_summary(self, job_name: str, totals: dict[str, Any], end: RunEnd) -> dict[str, Any]:
        summary = summarize(self.records, job_name, totals, end.early_stop)
        atomic_write_text(self.paths.summary, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary

    def _committed_records(self, ckpt: Checkpoint | None) -> list[RoundRecord]:
        if ckpt is None:
            return []
        stored = ckpt.extra.get(RECORDS_KEY)
        if stored is None:
            # A checkpoint from before records moved into it: trust metrics.jsonl up to its round.
            return [r for r in read_records(self.paths.metrics) if r.round <= ckpt.round]
        return [RoundRecord(**item) for item in stored]


def summarize(
    records: Sequence[RoundRecord], job_name: str, totals: dict[str, Any], stop_reason: str | None = None
) -> dict[str, Any]:
    evaluated = [r for r in records if r.accuracy is not None]
    final = evaluated[-1] if evaluated else None
    best = max(evaluated, key=lambda r: r.accuracy or 0.0) if evaluated else None
    waited_for = sum(r.invited - r.surplus for r in records)
    return {
        "job": job_name,
        "rounds": len(records),
        "rounds_failed": sum(1 for r in records if not r.succeeded),
        "final_accuracy": final.accuracy if final else None,
        "final_loss": final.loss if final else None,
        "best_accuracy": best.accuracy if best else None,
        "best_round": best.round if best else None,
        "participants": sum(r.participants for r in records),
        "dropped": sum(r.dropped for r in records),
        "late": sum(r.late for r in records),
        "surplus": sum(r.surplus for r in records),
        "rejected": sum(r.rejected for r in records),
        "churn_rate": (sum(r.lost for r in records) / waited_for) if waited_for else 0.0,
        "bytes_sent": sum(r.bytes_sent for r in records),
        "bytes_received": sum(r.bytes_received for r in records),
        "wall_seconds": round(sum(r.wall_seconds for r in records), 2),
        "epsilon": records[-1].epsilon if records else None,
        "stop_reason": stop_reason,
        "totals": totals,
    }


def _has_content(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _remove_stale_temporaries(root: Path) -> None:
    # atomic_writer's temporaries of a process killed mid-write (".name.XXXX.tmp"): nothing reads them.
    for stale in root.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()

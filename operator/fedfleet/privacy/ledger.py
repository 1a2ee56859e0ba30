"""The per-device privacy-budget ledger: cumulative ε per pseudonymous device id, across rounds and jobs.

Stored in SQLite (stdlib `sqlite3`) in WAL mode with `synchronous=FULL`: every charge is one transaction,
so a crash leaves either all of a round's charges or none, and a committed charge survives power loss. Each
charge is keyed by (job, round, device), so replaying a round after a crash never charges a device twice.
Several processes may share the file (SQLite serialises writers; `BEGIN IMMEDIATE` takes the write lock at
the start so two writers cannot deadlock upgrading their locks).

What a charge means. A device that took part in a released round is charged the ε of that round's
mechanism *for a participant* — the Gaussian mechanism with the round's z and q = 1, see
`accountant.per_participation_epsilon`. ε values add up (basic composition: the sum of per-round ε's, with
the δ's adding up likewise, bounds the device's total loss whatever the mechanisms were). This is
deliberately conservative:

- it ignores amplification by sampling, which the job-level ε relies on and which holds only if devices are
  sampled uniformly at random — in a real fleet availability is not random, so a per-device guarantee
  should not lean on it;
- summing ε's is looser than composing the rounds in one accountant (RDP/PLD), but it is valid across jobs
  with different mechanisms and δ's, which is exactly what a lifetime budget spans.

The job-level ε (the amplified figure the job reports) is the guarantee for every device of the fleet for
that job; the ledger's figure is each device's worst case across everything it ever took part in.

Device ids are stored as given: callers pass the pseudonymous id the fleet already uses, never a
hardware identifier.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

SCHEMA_VERSION = 1
# Cumulative ε is a float sum; a device this close below its budget counts as at budget.
BUDGET_TOLERANCE = 1e-9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    job TEXT NOT NULL,
    round INTEGER NOT NULL CHECK (round >= 0),
    device TEXT NOT NULL,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    charged_at REAL NOT NULL,
    PRIMARY KEY (job, round, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    participations INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS devices_by_epsilon ON devices (epsilon);
"""


class LedgerError(Exception):
    """The ledger file cannot be used (unreadable, newer schema, locked for too long)."""


@dataclass(frozen=True)
class LedgerSummary:
    """The distribution of cumulative ε over the devices that were ever charged."""

    devices: int
    charges: int
    mean: float
    quantiles: dict[float, float]  # {0.5: median, 0.9: …, 0.99: …}
    max: float


@dataclass(frozen=True)
class ChargeResult:
    charged: int  # (job, round, device) charges written now
    already_charged: int  # devices this round had already charged (a replayed round)


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ValueError(f"{kind} must be a non-empty string of at most 512 characters, got {value!r}")
    return value


def _check_epsilon(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"epsilon_increment must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_budget(budget: float) -> float:
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a finite number > 0, got {budget!r}")
    return float(budget)


class PrivacyLedger:
    """Cumulative ε per device, in one SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path, *, timeout_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of `transaction()`
        try:
            # isolation_level=None: no implicit transactions; every write is in an explicit BEGIN IMMEDIATE.
            self._db = sqlite3.connect(
                self.path, timeout=timeout_seconds, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self.transaction():
                version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise LedgerError(
                        f"{self.path}: ledger schema {version} is newer than this fedfleet understands "
                        f"({SCHEMA_VERSION}); upgrade fedfleet"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot open the privacy ledger: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All ledger writes inside the block commit together or not at all (nesting joins the outer one)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def charge(self, job: str, round_number: int, device_ids: Iterable[str], epsilon_increment: float) -> ChargeResult:
        """Charge each device `epsilon_increment` for (job, round), once: a replayed round charges nobody again."""
        job = _check_name("job", job)
        if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 0:
            raise ValueError(f"round must be an integer >= 0, got {round_number!r}")
        increment = _check_epsilon(epsilon_increment)
        devices = sorted({_check_name("device id", d) for d in device_ids})
        now = time.time()
        charged = 0
        try:
            with self.transaction():
                for device in devices:
                    inserted = self._db.execute(
                        "INSERT OR IGNORE INTO charges (job, round, device, epsilon, charged_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (job, round_number, device, increment, now),
                    ).rowcount
                    if inserted:
                        self._db.execute(
                            "INSERT INTO devices (device, epsilon, participations) VALUES (?, ?, 1) "
                            "ON CONFLICT (device) DO UPDATE SET epsilon = epsilon + excluded.epsilon, "
                            "participations = participations + 1",
                            (device, increment),
                        )
                        charged += 1
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: charge for {job} round {round_number} failed: {exc}") from None
        return ChargeResult(charged=charged, already_charged=len(devices) - charged)

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return list(self._db.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: query failed: {exc}") from None

    def spent(self, device_id: str) -> float:
        """Cumulative ε of a device; 0 for a device never charged."""
        rows = self._query("SELECT epsilon FROM devices WHERE device = ?", (device_id,))
        return float(rows[0][0]) if rows else 0.0

    def participations(self, device_id: str) -> int:
        rows = self._query("SELECT participations FROM devices WHERE device = ?", (device_id,))
        return int(rows[0][0]) if rows else 0

    def exhausted(self, budget: float) -> set[str]:
        """Devices at or over `budget`."""
        floor = _check_budget(budget) * (1 - BUDGET_TOLERANCE)
        return {str(r[0]) for r in self._query("SELECT device FROM devices WHERE epsilon >= ?", (floor,))}

    def cannot_afford(self, budget: float, increment: float) -> set[str]:
        """Devices whose next charge of `increment` would take them over `budget`: exclude them from cohorts."""
        budget = _check_budget(budget)
        increment = _check_epsilon(increment)
        ceiling = budget * (1 + BUDGET_TOLERANCE) - increment
        exhausted = self.exhausted(budget)
        return exhausted | {str(r[0]) for r in self._query("SELECT device FROM devices WHERE epsilon > ?", (ceiling,))}

    def near_budget(self, budget: float, fraction: float = 0.9) -> list[tuple[str, float]]:
        """(device, ε) of devices with ε ≥ fraction·budget (those at budget included), highest first."""
        budget = _check_budget(budget)
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        rows = self._query(
            "SELECT device, epsilon FROM devices WHERE epsilon >= ? ORDER BY epsilon DESC, device",
            (fraction * budget * (1 - BUDGET_TOLERANCE),),
        )
        return [(str(d), float(e)) for d, e in rows]

    def epsilons(self) -> NDArray[np.float64]:
        """Every charged device's cumulative ε (no ids): the input of histograms."""
        rows = self._query("SELECT epsilon FROM devices")
        return np.fromiter((float(r[0]) for r in rows), dtype=np.float64, count=len(rows))

    def distribution(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> LedgerSummary:
        values = self.epsilons()
        charges = int(self._query("SELECT COUNT(*) FROM charges")[0][0])
        if values.size == 0:
            return LedgerSummary(0, charges, 0.0, {q: 0.0 for q in quantiles}, 0.0)
        qs = np.quantile(values, quantiles)
        return LedgerSummary(
            devices=int(values.size),
            charges=charges,
            mean=float(values.mean()),
            quantiles={q: float(v) for q, v in zip(quantiles, qs, strict=True)},
            max=float(values.max()),
        )


def render_ledger_report(ledger: PrivacyLedger, budget: float | None, fraction: float = 0.9, limit: int = 20) -> str:
    """The text `fedfleet ledger` prints: the ε distribution and the devices near or at `budget`."""
    summary = ledger.distribution()
    lines = [f"privacy ledger {ledger.path}"]
    if summary.devices == 0:
        lines.append("no device has been charged yet")
        return "\n".join(lines) + "\n"
    lines.append(f"devices charged: {summary.devices}    charges: {summary.charges}")
    quantiles = "  ".join(f"p{round(q * 100):g} {v:.4g}" for q, v in summary.quantiles.items())
    lines.append(f"cumulative ε:    mean {summary.mean:.4g}  {quantiles}  max {summary.max:.4g}")
    if budget is None:
        lines.append("no device budget given: pass one to list the devices near or at it")
        return "\n".join(lines) + "\n"
    exhausted = ledger.exhausted(budget)
    near = ledger.near_budget(budget, fraction)
    lines.append(
        f"budget ε = {budget:g}: {len(exhausted)} at budget (excluded from cohorts), "
        f"{len(near) - len(exhausted)} at ≥ {fraction:.0%} of it"
    )
    if near:
        lines.append("")
        lines.append(f"{'device':<40} {'ε':>10} {'of budget':>10}  state")
        for device, eps in near[:limit]:
            state = "exhausted" if device in exhausted else "near"
            lines.append(f"{device:<40} {eps:>10.4g} {eps / budget:>10.1%}  {state}")
        if len(near) > limit:
            lines.append(f"… and {len(near) - limit} more")
    return "\n".join(lines) + "\n"

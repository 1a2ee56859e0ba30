"""The per-device privacy ledger: durable, idempotent per (job, round, device), atomic, safe to share."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from fedfleet.privacy.ledger import LedgerError, PrivacyLedger, render_ledger_report


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger" / "privacy.db"


def test_charges_survive_closing_and_reopening(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        ledger.charge("ns/job-a", 1, ["d1", "d2"], 0.5)
        ledger.charge("ns/job-a", 2, ["d1"], 0.5)
    with PrivacyLedger(path) as reopened:
        assert reopened.spent("d1") == pytest.approx(1.0)
        assert reopened.spent("d2") == pytest.approx(0.5)
        assert reopened.spent("never-seen") == 0.0
        assert reopened.participations("d1") == 2


def test_the_file_is_in_wal_mode(path: Path) -> None:
    PrivacyLedger(path).close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_replayed_round_charges_nobody_twice(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        first = ledger.charge("ns/job", 3, ["a", "b", "c"], 1.0)
        assert (first.charged, first.already_charged) == (3, 0)
        # The aggregator crashed after charging and replays round 3, this time with one more device.
        again = ledger.charge("ns/job", 3, ["a", "b", "c", "d"], 1.0)
        assert (again.charged, again.already_charged) == (1, 3)
        assert [ledger.spent(d) for d in "abcd"] == [1.0, 1.0, 1.0, 1.0]
        # The same round of another job is a different charge; so is the next round.
        ledger.charge("ns/other", 3, ["a"], 1.0)
        ledger.charge("ns/job", 4, ["a"], 1.0)
        assert ledger.spent("a") == pytest.approx(3.0)
        assert ledger.distribution().charges == 6


def test_a_device_listed_twice_in_one_call_is_charged_once(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        assert ledger.charge("j", 1, ["a", "a", "a"], 2.0).charged == 1
        assert ledger.spent("a") == 2.0


def test_exhausted_cannot_afford_and_near_budget(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        for r in range(10):  # 10 × 0.1 accumulates float error; "at budget" must still hold
            ledger.charge("j", r, ["full"], 0.1)
        for r in range(9):
            ledger.charge("j", r, ["almost"], 0.1)
        ledger.charge("j", 0, ["fresh"], 0.1)
        assert ledger.exhausted(1.0) == {"full"}
        # A round costing 0.1 is still affordable for "almost" (0.9 + 0.1 = budget), not for "full".
        assert ledger.cannot_afford(1.0, 0.1) == {"full"}
        assert ledger.cannot_afford(1.0, 0.2) == {"full", "almost"}
        near = ledger.near_budget(1.0, fraction=0.9)
        assert [d for d, _ in near] == ["full", "almost"]
        assert near[0][1] == pytest.approx(1.0)
        with pytest.raises(ValueError, match="budget"):
            ledger.exhausted(0.0)
        with pytest.raises(ValueError, match="fraction"):
            ledger.near_budget(1.0, fraction=1.5)


def test_distribution_summarises_every_device(path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 5, 200)
    with PrivacyLedger(path) as ledger:
        assert ledger.distribution().devices == 0
        for i, v in enumerate(values):
            ledger.charge("j", 1, [f"dev-{i}"], float(v))
        summary = ledger.distribution()
        assert summary.devices == 200 and summary.charges == 200
        assert summary.max == pytest.approx(values.max())
        assert summary.mean == pytest.approx(values.mean())
        assert summary.quantiles[0.9] == pytest.approx(np.quantile(values, 0.9))
        np.testing.assert_allclose(np.sort(ledger.epsilons()), np.sort(values))


def test_two_connections_writing_at_once_lose_nothing(path: Path) -> None:
    """Two ledgers (two SQLite connections) on one file, each charging from its own thread."""
    first, second = PrivacyLedger(path), PrivacyLedger(path)
    errors: list[BaseException] = []

    def work(ledger: PrivacyLedger, job: str) -> None:
        try:
            for r in range(150):
                ledger.charge(job, r, ["shared", f"{job}-own"], 0.01)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(first, "job-1")),
        threading.Thread(target=work, args=(second, "job-2")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    first.close()
    second.close()
    with PrivacyLedger(path) as ledger:
        assert ledger.spent("shared") == pytest.approx(3.0)
        assert ledger.spent("job-1-own") == pytest.approx(1.5)
        assert ledger.participations("shared") == 300


def test_a_failing_transaction_leaves_nothing(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        ledger.charge("j", 1, ["a"], 1.0)
        with pytest.raises(RuntimeError), ledger.transaction():
            ledger.charge("j", 2, ["a", "b"], 1.0)
            ledger.charge("other", 2, ["c"], 1.0)
            raise RuntimeError("the checkpoint write failed")
        assert ledger.spent("a") == 1.0 and ledger.spent("b") == 0.0 and ledger.spent("c") == 0.0
    with PrivacyLedger(path) as reopened:
        assert reopened.distribution().charges == 1


def test_a_process_killed_mid_transaction_leaves_nothing(path: Path) -> None:
    PrivacyLedger(path).close()
    script = textwrap.dedent(
        f"""
        import os
        from fedfleet.privacy.ledger import PrivacyLedger
        ledger = PrivacyLedger({str(path)!r})
        ledger.charge("j", 1, ["committed"], 1.0)
        with ledger.transaction():
            ledger.charge("j", 2, ["a", "b"], 1.0)
            os._exit(9)  # crash: no rollback, no close
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 9, done.stderr.decode()
    with PrivacyLedger(path) as ledger:
        assert ledger.spent("committed") == 1.0
        assert ledger.spent("a") == 0.0 and ledger.spent("b") == 0.0
        assert ledger.distribution().charges == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", 1, ["a"], 1.0), "job"),
        (("j", -1, ["a"], 1.0), "round"),
        (("j", 1, [""], 1.0), "device id"),
        (("j", 1, ["a"], -0.1), "epsilon_increment"),
        (("j", 1, ["a"], float("nan")), "epsilon_increment"),
    ],
)
def test_invalid_charges_are_refused_and_write_nothing(path: Path, args: tuple[object, ...], message: str) -> None:
    with PrivacyLedger(path) as ledger:
        with pytest.raises(ValueError, match=message):
            ledger.charge(*args)  # type: ignore[arg-type]
        assert ledger.distribution().charges == 0


def test_a_ledger_from_a_newer_fedfleet_is_refused(path: Path) -> None:
    PrivacyLedger(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(LedgerError, match="newer"):
        PrivacyLedger(path)


def test_report_lists_the_distribution_and_the_devices_near_budget(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        assert "no device has been charged" in render_ledger_report(ledger, 4.0)
        ledger.charge("j", 1, ["dev-full", "dev-near", "dev-low"], 2.0)
        ledger.charge("j", 2, ["dev-full", "dev-near"], 1.7)
        ledger.charge("j", 3, ["dev-full"], 0.3)
        report = render_ledger_report(ledger, 4.0, fraction=0.9)
    assert "devices charged: 3" in report
    assert "1 at budget" in report and "1 at ≥ 90% of it" in report
    lines = report.splitlines()
    full = next(line for line in lines if line.startswith("dev-full"))
    near = next(line for line in lines if line.startswith("dev-near"))
    assert "exhausted" in full and "100.0%" in full
    assert "near" in near and "92.5%" in near
    assert not any(line.startswith("dev-low") for line in lines)
    assert "max 4" in report

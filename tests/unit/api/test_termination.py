"""The termination contract: the aggregator writes one short line in place, and the operator finds it in a
container's status only after exit code 2, however the node shaped that status."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fedfleet.api.termination import (
    EXIT_BAD_INPUT,
    MAX_MESSAGE_BYTES,
    MAX_SHOWN_CHARS,
    one_line,
    refused_input,
    write_message,
)


def test_one_line_flattens_control_characters_and_cuts_long_text() -> None:
    assert one_line("spec.rounds:\n  must be\tat least 1\x1b[31m", 100) == "spec.rounds: must be at least 1 [31m"
    cut = one_line("x" * 50, 10)
    assert cut == "x" * 9 + "…" and len(cut) == 10
    assert one_line("short", 10) == "short"


def test_the_message_is_written_in_place(tmp_path: Path) -> None:
    # In a container the kubelet bind-mounts this file: replacing it by a rename would fail there.
    path = tmp_path / "termination-log"
    path.write_text("left by an earlier run of the container, and longer than the new message")
    inode = os.stat(path).st_ino
    write_message(path, "simulation.testSamples: must be smaller\nthan 1797")
    assert path.read_text() == "simulation.testSamples: must be smaller than 1797"
    assert os.stat(path).st_ino == inode


def test_a_long_message_fits_the_kubelets_limit_without_a_split_character(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    write_message(path, "ε" * MAX_MESSAGE_BYTES)  # two bytes each in UTF-8
    data = path.read_bytes()
    assert len(data) <= MAX_MESSAGE_BYTES
    assert data.decode("utf-8").strip("ε…") == ""


def _terminated(code: Any, message: Any = None) -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": code, "reason": "Error"}
    if message is not None:
        terminated["message"] = message
    return {"terminated": terminated}


def test_exit_2_gives_the_message_whether_the_container_restarted_or_not() -> None:
    now = {"name": "aggregator", "state": _terminated(EXIT_BAD_INPUT, "fleetSize: must be at least 1")}
    assert refused_input(now) == "fleetSize: must be at least 1"
    restarted = {
        "name": "aggregator",
        "state": {"running": {"startedAt": "2030-01-01T00:00:00Z"}},
        "lastState": _terminated(EXIT_BAD_INPUT, "fleetSize: must be at least 1"),
    }
    assert refused_input(restarted) == "fleetSize: must be at least 1"


def test_exit_2_without_a_message_still_counts_and_says_where_to_look() -> None:
    for message in (None, "", "   \n"):
        said = refused_input({"lastState": _terminated(EXIT_BAD_INPUT, message)})
        assert said is not None and "exit code 2" in said and "log" in said


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"state": {"running": {}}},
        {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": _terminated(1, "Traceback ...")},
        {"state": _terminated(0, "done")},
        {"state": _terminated(137)},
        {"state": _terminated("2", "a string is not the exit code 2")},
        {"state": "garbage", "lastState": ["also", "garbage"]},
        {"state": {"terminated": "garbage"}},
    ],
    ids=["empty", "running", "crashed", "completed", "killed", "string-code", "bad-shapes", "bad-terminated"],
)
def test_anything_but_exit_2_is_not_refused_input(status: dict[str, Any]) -> None:
    assert refused_input(status) is None


def test_a_hostile_message_is_shown_as_one_short_line() -> None:
    # The image is the job author's choice: its message must not flood a condition or an Event.
    shown = refused_input({"state": _terminated(EXIT_BAD_INPUT, "line one\nline two\r\n" + "A" * 100_000)})
    assert shown is not None and "\n" not in shown and "\r" not in shown
    assert shown.startswith("line one line two AAA") and len(shown) == MAX_SHOWN_CHARS
    assert refused_input({"state": _terminated(EXIT_BAD_INPUT, {"not": "text"})}) is not None

"""How an aggregator container ends, as both sides of the pod boundary read it: its exit code and its
termination message.

`fedfleet aggregator` exits `EXIT_BAD_INPUT` when what it was given can never work (a configuration or job
it refuses, a privacy target no noise reaches, a state dir of another job) and writes its one-line error,
which names the field and the rule, to the file its `--termination-message` option names. The pod builder
(`operator/resources/pod.py`) gives that option and the container's `terminationMessagePath` the same path,
so the kubelet copies the line into `containerStatuses[].state.terminated.message` (`lastState` once the
container has been restarted). The operator (`operator/reconcile/plan.py`) reads it back with
`refused_input` and fails the job with it, instead of restarting the pod until its deadline. Any other
non-zero exit is a crash: the pod restarts in place and resumes from its checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXIT_COMPLETE = 0
EXIT_CRASHED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3

#: Kubernetes' default, set explicitly on the container so that both sides name the same file.
MESSAGE_PATH = "/dev/termination-log"
#: With this policy the kubelet shows the tail of the log when a container crashed without writing the file.
MESSAGE_POLICY = "FallbackToLogsOnError"
#: The kubelet keeps at most this many bytes of a termination message.
MAX_MESSAGE_BYTES = 4096
#: The most of it the operator repeats in a condition or an Event. The text comes from a container whose image
#: the job's author chooses, so it is cut to one short line, whatever the file holds.
MAX_SHOWN_CHARS = 1024

_NO_MESSAGE = f"exit code {EXIT_BAD_INPUT} (bad input) without a termination message; its log says why"


def one_line(text: str, limit: int) -> str:
    """`text` as one line of printable characters, at most `limit` characters long."""
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    line = " ".join(printable.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def write_message(path: Path, message: str) -> None:
    """Write the message to the termination message file. In place, never by rename: in a container the file
    is a bind mount, which cannot be replaced. Raises OSError."""
    cut = one_line(message, MAX_MESSAGE_BYTES).encode("utf-8")[:MAX_MESSAGE_BYTES]
    data = cut.decode("utf-8", "ignore").encode("utf-8")  # no character split at the cut
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def refused_input(container_status: Mapping[str, Any]) -> str | None:
    """The container's message when it exited with EXIT_BAD_INPUT, now or before its last restart; None when
    it did not. Never raises on a status of an unexpected shape: it comes from the node."""
    for key in ("state", "lastState"):
        state = container_status.get(key)
        terminated = state.get("terminated") if isinstance(state, Mapping) else None
        if isinstance(terminated, Mapping) and terminated.get("exitCode") == EXIT_BAD_INPUT:
            message = terminated.get("message")
            shown = one_line(message, MAX_SHOWN_CHARS) if isinstance(message, str) else ""
            return shown or _NO_MESSAGE
    return None

"""Helpers shared by the end-to-end tests (a module with a unique name, so tests can import it)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
# e2e/ holds scripts, not packages: make the control plane and node agent modules importable.
for _path in (REPO / "e2e" / "controlplane", REPO / "e2e" / "nodeagent"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import cluster  # noqa: E402
from kubeapi import ApiError, KubeApi  # noqa: E402

__all__ = ["REPO", "ApiError", "KubeApi", "NodeAgent", "cluster", "wait_for"]

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll fn until it returns something truthy; fail naming `what` (and the last error) on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
            last = value
        except (ApiError, OSError, KeyError) as err:
            last = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass(frozen=True)
class NodeAgent:
    name: str
    state_dir: Path
    log: Path
    process: subprocess.Popen[bytes]
    pod_cidr: str

    def pod_dir(self, uid: str) -> Path:
        return self.state_dir / "pods" / uid

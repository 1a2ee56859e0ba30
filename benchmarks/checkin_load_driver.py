"""The Go check-in load generator (benchmarks/checkin_load/) from Python: built once per source version with
the local Go toolchain and the module versions e2e/controlplane already uses, started with its devices, run
for a window, stopped.

Why Go: a Python gRPC client spends about as much CPU per call as the gateway spends answering it, so on a
2-core machine Python clients take half the CPU from the gateway they are measuring; the Go client needs a
fraction of that.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "checkin_load"
CACHE = Path(os.environ.get("FEDFLEET_CACHE", Path.home() / ".cache/fedfleet")) / "bench"
BUILD_SECONDS = 600.0


def go_toolchain() -> str | None:
    """The `go` command: on PATH, or Go's standard install location (as e2e/controlplane/build.sh looks)."""
    found = shutil.which("go")
    if found:
        return found
    return "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None


def build() -> Path:
    """The binary for the current sources (cached by their digest). Raises RuntimeError naming the problem."""
    go = go_toolchain()
    if go is None:
        raise RuntimeError("no Go toolchain (go on PATH or /usr/local/go): use --checkin-client python")
    digest = hashlib.sha256()
    for name in ("main.go", "go.mod", "go.sum"):
        digest.update((SOURCE / name).read_bytes())
    binary = CACHE / f"checkin_load-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}.tmp")
    # readonly: go.mod and go.sum are what they are (no lookups, no edits); local: never fetch a toolchain.
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -trimpath", "CGO_ENABLED": "0"}
    done = subprocess.run(
        [go, "build", "-o", str(partial), "."], cwd=SOURCE, env=env, capture_output=True, text=True,
        timeout=BUILD_SECONDS, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"building {SOURCE} failed:\n{done.stderr[-2000:]}")
    partial.replace(binary)
    return binary


class GoCheckIns:
    """One checkin_load process: each device on its own TLS connection, all connected once it is ready."""

    def __init__(
        self,
        binary: Path,
        target: str,
        ca_path: Path,
        devices: Sequence[tuple[str, bytes]],
        concurrency: int,
        ready_seconds: float,
    ) -> None:
        self.process = subprocess.Popen(
            [str(binary), "-target", target, "-ca", str(ca_path), "-concurrency", str(concurrency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdin is not None
        for token, request in devices:
            self.process.stdin.write(f"{token}\t{base64.b64encode(request).decode()}\n")
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        if self._line(ready_seconds) != "ready":
            raise RuntimeError("checkin_load did not get ready")

    def run(self, seconds: float, timeout: float) -> dict[str, Any]:
        """One window of `seconds`: {"ok", "errors", "p50_ms", "p99_ms", "cpu_seconds"}."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"run {seconds}\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._line(timeout))
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("stop\n")
                self.process.stdin.close()
                self.process.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()

    def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            _, errors = self.process.communicate()
            raise RuntimeError(f"checkin_load stopped answering (exit {self.process.returncode}): {errors[-2000:]}")
        return line.strip()

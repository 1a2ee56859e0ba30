"""The Prometheus binaries that the rule and configuration tests run, and where the project's rules are.

prometheus and promtool are built once per machine by e2e/prometheus/build.sh (from the Go module proxy, cached
by version; `make test` builds them before the tests start). A test that needs them and cannot get them fails,
naming why: the rules are part of what ships, so "could not check them" must never pass as a skip.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "e2e" / "prometheus" / "build.sh"
RULES = REPO / "charts" / "fedfleet" / "files" / "rules.yaml"


@functools.cache
def prometheus_bin_dir() -> Path:
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT.relative_to(REPO)} could not provide promtool:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run our promtool; returns the finished process (exit code and output) for the test to judge."""
    argv = [str(prometheus_bin_dir() / "promtool"), *(str(a) for a in args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)

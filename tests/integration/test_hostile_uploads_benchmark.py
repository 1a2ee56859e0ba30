"""The hostile-upload benchmark at its cheapest size, against a real aggregator process over TLS: padded
headers refused unparsed, stalled streams refused, RSS flat, /healthz answering (the script's own bars)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_hostile_uploads.py"


@pytest.mark.slow
def test_hostile_uploads_leave_a_real_aggregator_process_flat() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--headers", "2", "--streams", "20"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "headers of 1,000,000 TensorSpecs: {'DATA_LOSS': 2}" in done.stdout
    assert "stalled streams from one device:" in done.stdout and "'OK'" not in done.stdout

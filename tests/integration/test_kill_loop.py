"""`fedfleet run` killed with SIGKILL at every change of its run directory, resumed each time: every round
is recorded exactly once, the summary agrees with the records, and (in process) the model is bit-identical
to an uninterrupted run's.

Attempt k kills the process at the k-th change it makes to the directory (a file created, renamed over,
appended to), so together the attempts kill a run at each of its file-system events in turn — also before
its first checkpoint, and between a checkpoint and its record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

FEDFLEET = Path(sys.executable).with_name("fedfleet")
ROUNDS = 3
JOB = f"""\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: kill-loop
spec:
  rounds: {ROUNDS}
  seed: 2
  model: {{architecture: logistic}}
  training: {{localEpochs: 1, batchSize: 20, learningRate: 0.1}}
  cohort: {{clientsPerRound: 4, overSelection: 1.5, minReports: 2, roundDeadlineSeconds: 60}}
  evaluation: {{serverEvery: 1}}
  simulation: {{devices: 8, dataset: digits, testSamples: 100, dropoutProbability: 0.2}}
"""
MAX_ATTEMPTS = 80
ATTEMPT_SECONDS = 120.0


def snapshot(run_dir: Path) -> dict[str, tuple[int, int, int]]:
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return {}
    state = {}
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # renamed away between listing and stat: the next snapshot sees it
        state[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return state


def attempt(command: list[str], run_dir: Path, kill_at: int) -> bool:
    """Run until the `kill_at`-th change of the run directory, then SIGKILL; True when it finished first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, changes = snapshot(run_dir), 0
    deadline = time.monotonic() + ATTEMPT_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        now = snapshot(run_dir)
        if now != seen:
            seen, changes = now, changes + 1
            if changes >= kill_at:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return False
        time.sleep(0.0005)
    if process.poll() is None:
        process.kill()
        process.wait()
        pytest.fail(f"attempt {kill_at} did not finish in {ATTEMPT_SECONDS}s")
    assert process.stderr is not None
    error = process.stderr.read()
    assert process.returncode == 0, f"attempt {kill_at}: exit {process.returncode}: {error[-2000:]}"
    return True


def run_with_kills(job: Path, run_dir: Path, transport: str) -> int:
    base = [str(FEDFLEET), "run", str(job), "--out", str(run_dir), "--transport", transport, "--quiet"]
    for kill_at in range(1, MAX_ATTEMPTS + 1):
        # Every attempt but the first continues the run; the first may already have been killed before
        # anything of it reached the disk, and resuming such a run starts it from round 0.
        if attempt(base + (["--resume"] if kill_at > 1 else []), run_dir, kill_at):
            return kill_at - 1
    pytest.fail(f"the run did not finish in {MAX_ATTEMPTS} attempts")


def check_run(run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1)), "each round recorded exactly once"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS
    assert summary["participants"] == sum(r["participants"] for r in records)
    assert summary["totals"]["outcomes"]["completed"] == summary["participants"]
    assert summary["totals"]["rounds_succeeded"] + summary["totals"]["rounds_failed"] == ROUNDS
    assert not list(run_dir.glob(".*.tmp")), "no temporary file is left behind"


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    return state


@pytest.mark.slow
def test_inprocess_run_killed_at_every_file_event_ends_bit_identical(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    clean = tmp_path / "clean"
    assert attempt([str(FEDFLEET), "run", str(job), "--out", str(clean), "--transport", "inprocess", "--quiet"],
                   clean, kill_at=10**9)  # fmt: skip
    killed = tmp_path / "killed"
    kills = run_with_kills(job, killed, "inprocess")
    assert kills >= 2 * ROUNDS, f"only {kills} kills: the loop did not reach the rounds"
    check_run(killed)
    expected, got = weights(clean), weights(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after {kills} kills"
    print(f"in process: {kills} kills")


@pytest.mark.slow
def test_grpc_run_killed_at_every_file_event_records_each_round_once(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    killed = tmp_path / "killed"
    kills = run_with_kills(job, killed, "grpc")
    assert kills >= 2 * ROUNDS, f"only {kills} kills: the loop did not reach the rounds"
    check_run(killed)
    print(f"over gRPC: {kills} kills")

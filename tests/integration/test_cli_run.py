"""`fedfleet run` as a user runs it: the real executable, real data, files on disk, kill -9 and resume."""

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

from busy_machine import MachineSpeed

FEDFLEET = Path(sys.executable).with_name("fedfleet")

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: resume-me
spec:
  rounds: {rounds}
  seed: 11
  training: {{localEpochs: 2, batchSize: 10, learningRate: 0.1}}
  cohort: {{clientsPerRound: 10, overSelection: 1.3, minReports: 6}}
  aggregation: {{strategy: fedavgm, serverLearningRate: 1.0, serverMomentum: 0.5}}
  evaluation: {{serverEvery: 1, federatedEvery: 4}}
  simulation:
    devices: 60
    testSamples: 500
    holdoutFraction: 0.2
    dropoutProbability: 0.15
    sizeDistribution: lognormal
    partition: {{scheme: dirichlet, alpha: 0.5}}
"""


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FEDFLEET), *args], capture_output=True, text=True, timeout=timeout, check=False)


def write_job(tmp_path: Path, rounds: int) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(rounds=rounds))
    return path


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    state: dict[str, torch.Tensor] = saved["state_dict"]
    return state


def test_run_writes_model_metrics_and_plot(tmp_path: Path) -> None:
    job = write_job(tmp_path, rounds=4)
    out = tmp_path / "run"
    done = run_cli("run", str(job), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "final accuracy" in done.stdout and str(out / "report.png") in done.stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert r["participants"] + r["dropped"] + r["late"] + r["surplus"] + r["rejected"] == r["invited"] == 13
        assert 0.0 < r["accuracy"] <= 1.0 and r["bytes_received"] > 0 and r["bytes_sent"] > 0
    assert lines[3]["federated_accuracy"] is not None
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["rounds"] == 4
    # the saved model loads into a fresh 2NN and classifies the held-out digits as well as reported
    from fedfleet.data.datasets import load_dataset, train_test_split
    from fedfleet.device.training import evaluate
    from fedfleet.models.nets import build_model

    saved = torch.load(out / "model.pt", weights_only=True)
    model = build_model(saved["architecture"], tuple(saved["image_shape"]), saved["num_classes"], seed=0)
    model.load_state_dict(saved["state_dict"])
    _, test = train_test_split(load_dataset("mnist5k"), 500, seed=11)
    assert evaluate(model, test.x, test.y).accuracy == pytest.approx(lines[-1]["accuracy"], abs=1e-9)

    again = run_cli("run", str(job), "--out", str(out))
    assert again.returncode == 2
    assert "already holds a run" in again.stderr and "--resume" in again.stderr


def test_kill_9_mid_run_then_resume_gives_bit_identical_weights(tmp_path: Path, machine_speed: MachineSpeed) -> None:
    rounds = 14
    job = write_job(tmp_path, rounds)
    straight = tmp_path / "straight"
    # Bit-identical resumption is a property of the in-process transport: over gRPC the order in which
    # updates arrive is up to the network.
    assert run_cli("run", str(job), "--out", str(straight), "--quiet", "--transport", "inprocess").returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(FEDFLEET), "run", str(job), "--out", str(killed), "--quiet", "--transport", "inprocess"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + machine_speed.seconds(120)
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    completed_before_kill = len(metrics.read_text().splitlines())
    assert 5 <= completed_before_kill < rounds, "the kill must land in the middle of the run"
    assert not (killed / "model.pt").exists()

    resumed = run_cli("run", str(job), "--out", str(killed), "--resume", "--quiet", "--transport", "inprocess")
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    rounds_logged = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    assert rounds_logged == list(range(1, rounds + 1))

    def strip_timing(path: Path) -> list[dict[str, object]]:
        return [
            {k: v for k, v in json.loads(line).items() if k != "wall_seconds"} for line in path.read_text().splitlines()
        ]

    assert strip_timing(metrics) == strip_timing(straight / "metrics.jsonl")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("rounds: {rounds}", "rounds: -1"), "spec.rounds: must be at least 1 (got -1)"),
        (("seed: 11", "seed: 11\n  colour: blue"), "spec.colour: unknown field"),
        (("clientsPerRound: 10,", "clientsPerRound: 100,"), "spec.cohort.clientsPerRound"),
        (("alpha: 0.5", "alpha: 0"), "spec.simulation.partition.alpha: must be greater than 0"),
        (("strategy: fedavgm", "strategy: fedmagic"), "spec.aggregation.strategy: must be one of"),
        (("kind: FederatedJob", "kind: FederatedJob\n  oops: [unclosed"), "YAML syntax error at line"),
    ],
)
def test_bad_manifest_exits_2_with_one_line_naming_the_field(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(JOB.replace(*edit).format(rounds=3))
    done = run_cli("run", str(path), "--out", str(tmp_path / "never"))
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "never").exists()


def test_missing_manifest_and_bad_arguments_exit_2(tmp_path: Path) -> None:
    missing = run_cli("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert run_cli("run").returncode == 2


@pytest.mark.parametrize("transport", ["inprocess", "grpc"])
def test_an_unusable_out_is_one_line_naming_it(tmp_path: Path, transport: str) -> None:
    job = write_job(tmp_path, rounds=1)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for out, problem in ((a_file, "exists and is not a directory"), (a_file / "below", "cannot create")):
        done = run_cli("run", str(job), "--out", str(out), "--transport", transport, "--quiet", timeout=60)
        assert done.returncode == 2 and done.stderr.startswith(f"fedfleet: error: --out {out}: {problem}")
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1

"""`fedfleet rollout` as a user runs it: the real executable, a model trained here, files on disk; the exit code
says how the rollout ended, and bad input is one line on stderr naming the flag or field, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from embedded_rollout_support import rollout_manifest, train_job_model

FEDFLEET = Path(sys.executable).with_name("fedfleet")
STEPS = "[{setWeight: 10}, {analysis: {metrics: [accuracy]}}, {setWeight: 100}]"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FEDFLEET), *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_job_model(tmp_path_factory.mktemp("trained") / "run")


def test_a_rollout_to_healthy_prints_each_step_and_writes_its_report(model: Path, tmp_path: Path) -> None:
    manifest = rollout_manifest(tmp_path / "rollout.yaml", STEPS)
    out = tmp_path / "out"
    args = ("rollout", str(manifest), "--model", str(model), "--devices", "80", "--seed", "2", "--out", str(out))
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("no --stable: the fleet starts on the round-0 weights of job mnist-logistic" in line for line in lines)
    assert any("WeightSet: step 1/3: weight 10%" in line for line in lines)
    assert any("measured accuracy: Successful" in line for line in lines)
    assert any("RolloutCompleted" in line for line in lines)
    assert "healthy, Healthy (RolloutCompleted)" in done.stdout and str(out / "report.png") in done.stdout

    report = json.loads((out / "report.json").read_text())
    assert (report["outcome"], report["exit_code"], report["weight"]) == ("healthy", 0, 100)
    weights = [point["weight"] for point in report["points"]]
    assert weights[0] == 10 and weights[-1] == 100 and weights == sorted(weights)
    last = report["points"][-1]["devices"]
    assert last["share"] == 1.0 and last["stable"] == 0  # every online device runs the candidate, by its own word
    assert report["candidate"]["digest"].startswith("sha256:") and report["fleet_key"].startswith("ed25519:")
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr  # a second run replaces the first one's gateway volume
    assert json.loads((out / "report.json").read_text())["points"] == report["points"]  # the same seed: the same run


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("weight above 100", "spec.steps.0.setWeight: must be at most 100 (got 150)"),
        ("prometheus metric", "spec.analysis.metrics[0].provider: fedfleet rollout measures builtin metrics only"),
        ("condition that does not compile", "spec.analysis.metrics[0].successCondition"),
        ("missing model file", "--model"),
        ("no devices", "--devices: must be at least 1"),
        ("out is a file", "--out"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(
    model: Path, tmp_path: Path, case: str, expected: str
) -> None:
    manifest = rollout_manifest(tmp_path / "rollout.yaml", STEPS)
    text = manifest.read_text()
    args = ["rollout", str(manifest), "--model", str(model), "--out", str(tmp_path / "out")]
    if case == "weight above 100":
        manifest.write_text(text.replace("setWeight: 10}", "setWeight: 150}"))
    elif case == "prometheus metric":
        manifest.write_text(
            text.replace("provider: {builtin: {metric: accuracy}}", "provider: {prometheus: {query: 'vector(1)'}}")
        )
    elif case == "condition that does not compile":
        manifest.write_text(text.replace("result >= baseline - 0.05", "result >= "))
    elif case == "missing model file":
        args[3] = str(tmp_path / "no-such-model.pt")
    elif case == "no devices":
        args += ["--devices", "0"]
    else:
        (tmp_path / "file").write_text("")
        args[5] = str(tmp_path / "file")
    done = run_cli(*args, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

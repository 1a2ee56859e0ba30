"""`fedfleet aggregator`, run in process: input that can never work exits 2 and leaves its one-line reason in
the termination message file, where the kubelet picks it up for the operator; anything else exits 1 and
leaves the file alone, so the pod restarts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedfleet.api.termination import EXIT_BAD_INPUT, EXIT_CRASHED
from fedfleet.cli import main

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata: {name: digits, namespace: team-a}
spec:
  rounds: 3
  model: {architecture: logistic}
  cohort: {clientsPerRound: 4, minReports: 3}
  simulation: {devices: 6, dataset: digits, testSamples: 300}
"""
# No noise multiplier reaches this ε over three rounds: only planning the job's noise finds that out.
UNREACHABLE_EPSILON = "  privacy: {differentialPrivacy: {mode: central, targetEpsilon: 0.0001}}\n"


def _config(tmp_path: Path, job: str = JOB, port: int = 0, extra: str = "") -> Path:
    (tmp_path / "job.yaml").write_text(job)
    config = tmp_path / "aggregator.yaml"
    config.write_text(
        "job: job.yaml\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        "http: null\n"
        "tls: {cert: state/tls/server.crt, key: state/tls/server.key, ca: state/tls/ca.crt, generate: true}\n"
        "auth: {tokenKey: state/token.key, generate: true}\n"
        "stateDir: state\n" + extra
    )
    return config


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_a_bad_configuration_exits_2_with_its_reason_in_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, extra="evaluation: {dataset: digits, testSamples: 1797}\n")
    message = tmp_path / "termination-log"
    assert main(["aggregator", "--config", str(config), "--termination-message", str(message)]) == EXIT_BAD_INPUT
    written = message.read_text()
    assert written == f"{config}: evaluation.testSamples: must be smaller than the 1797 examples of digits (got 1797)"
    err = capsys.readouterr().err
    assert written in err and err.count("\n") == 1


def test_input_only_the_aggregator_can_judge_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, job=JOB + UNREACHABLE_EPSILON)
    message = tmp_path / "termination-log"
    assert main(["aggregator", "--config", str(config), "--termination-message", str(message)]) == EXIT_BAD_INPUT
    written = message.read_text()
    assert written.startswith("privacy.differentialPrivacy.targetEpsilon: cannot be reached: "), written
    assert "\n" not in written and "Traceback" not in capsys.readouterr().err


def test_the_path_is_resolved_under_the_pods_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The local node agent runs pods as processes and places their files under FEDFLEET_ROOT.
    root = tmp_path / "pod"
    (root / "dev").mkdir(parents=True)
    monkeypatch.setenv("FEDFLEET_ROOT", str(root))
    config = _config(tmp_path, extra="fleetSize: 0\n")
    assert (
        main(["aggregator", "--config", str(config), "--termination-message", "/dev/termination-log"]) == EXIT_BAD_INPUT
    )
    assert (root / "dev" / "termination-log").read_text().endswith("fleetSize: must be at least 1 (got 0)")


def test_an_unwritable_file_still_exits_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, extra="fleetSize: 0\n")
    missing = tmp_path / "no-such-dir" / "termination-log"
    assert main(["aggregator", "--config", str(config), "--termination-message", str(missing)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"cannot write {missing}" in err and "fleetSize: must be at least 1 (got 0)" in err


def test_a_failure_that_a_restart_may_fix_exits_1_and_writes_nothing(
    tmp_path: Path, port_in_use: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, port=port_in_use)
    message = tmp_path / "termination-log"
    assert main(["aggregator", "--config", str(config), "--termination-message", str(message)]) == EXIT_CRASHED
    assert not message.exists()
    assert f"cannot listen on 127.0.0.1:{port_in_use}" in capsys.readouterr().err

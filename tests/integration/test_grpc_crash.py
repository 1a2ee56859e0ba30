"""kill -9 the aggregator in the middle of a round, start it again on the same state dir: the job resumes
from the last finished round, nothing is counted twice, the devices reconnect by themselves, the job ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from aggregator_process import FEDFLEET, free_port, get, start_aggregator, wait_for
from prometheus_client.parser import text_string_to_metric_families

from busy_machine import MachineSpeed
from fedfleet.persist.checkpoint import load_checkpoint

ROUNDS = 14
#: Wall seconds per job second on an idle machine (a 20 s deadline is 1 s), stretched by the measured slowdown:
#: the aggregator and the fleet do real training and TLS inside every round's deadline.
IDLE_TIME_SCALE = 0.05

JOB = f"""\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: crash-me
spec:
  rounds: {ROUNDS}
  seed: 9
  model: {{architecture: 2nn}}
  training: {{localEpochs: 2, batchSize: 10, learningRate: 0.1}}
  cohort: {{clientsPerRound: 6, overSelection: 1.5, minReports: 5, roundDeadlineSeconds: 20}}
  evaluation: {{serverEvery: 1}}
  simulation: {{devices: 30, dataset: digits, testSamples: 300, dropoutProbability: 0.1}}
"""


#: Both tests pick free ports, close them, and let a `fedfleet aggregator` process bind them later (the restart must
#: find the same ones): they run one after the other, never side by side on two xdist workers.
pytestmark = pytest.mark.xdist_group("fixed-ports")


def gauges(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


@pytest.mark.slow
def test_sigkill_mid_round_then_restart_resumes_and_completes(tmp_path: Path, machine_speed: MachineSpeed) -> None:
    scale, wall = machine_speed.time_scale(IDLE_TIME_SCALE), machine_speed.seconds
    grpc_port, http_port = free_port(), free_port()
    state = tmp_path / "state"
    (tmp_path / "job.yaml").write_text(JOB)
    config = tmp_path / "aggregator.yaml"
    config.write_text(
        f"job: job.yaml\nlisten: {{host: 127.0.0.1, port: {grpc_port}}}\nhttp: {{host: 127.0.0.1, port: {http_port}}}\n"
        "tls: {cert: tls/server.crt, key: tls/server.key, ca: tls/ca.crt, generate: true}\n"
        "auth: {tokenKey: token.key, generate: true}\n"
        f"stateDir: state\ntimeScale: {scale}\nsettleSeconds: 0.5\npollSeconds: 2\nlingerSeconds: {wall(10)}\n"
    )
    log = tmp_path / "aggregator.log"
    fleet_log = tmp_path / "fleet.log"
    aggregator = start_aggregator(config, log)
    fleet: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: get(http_port, "/readyz")[0] == 200, wall(60), "the aggregator to be ready")
        fleet = subprocess.Popen(
            [str(FEDFLEET), "device-sim", "--aggregator", f"127.0.0.1:{grpc_port}", "--job", str(tmp_path / "job.yaml"),
             "--token-key", str(tmp_path / "token.key"), "--ca", str(tmp_path / "tls/ca.crt"),
             "--time-scale", str(scale), "--give-up-after", str(wall(90)),
             "--log-level", "INFO"],
            stdout=subprocess.PIPE, stderr=fleet_log.open("wb"), start_new_session=True,
        )  # fmt: skip
        metrics = state / "metrics.jsonl"

        def finished_rounds() -> int:
            return len(metrics.read_text().splitlines()) if metrics.exists() else 0

        wait_for(lambda: finished_rounds() >= 3, wall(90), "three finished rounds")

        def mid_round() -> bool:
            status, text = get(http_port, "/metrics")
            g = gauges(text) if status == 200 else {}
            # A round is open and has received updates, but has not finished.
            return (
                bool(g)
                and g["fedfleet_round_current"] > g["fedfleet_rounds_completed"]
                and (g["fedfleet_received_bytes_total"] > 0)
            )

        wait_for(mid_round, wall(30), "a round in progress")
        os.killpg(aggregator.pid, signal.SIGKILL)
        aggregator.wait()
        killed_after = finished_rounds()
        assert 3 <= killed_after < ROUNDS
        ckpt = load_checkpoint(state / "checkpoint.npz")
        assert ckpt is not None and ckpt.round == killed_after

        aggregator = start_aggregator(config, log)
        wait_for(lambda: get(http_port, "/readyz")[0] == 200, wall(60), "the restarted aggregator to be ready")
        _status, text = get(http_port, "/metrics")
        g = gauges(text)
        resumed_at = int(g["fedfleet_rounds_completed"])
        records = [json.loads(line) for line in metrics.read_text().splitlines()][:resumed_at]
        # Counters start from the checkpoint's totals: the rounds before the crash, each once.
        assert g["fedfleet_participants_total{outcome=completed}"] == sum(r["participants"] for r in records)
        assert g["fedfleet_rounds_total{result=succeeded}"] + g["fedfleet_rounds_total{result=failed}"] == resumed_at, g

        out, _err = fleet.communicate(timeout=wall(120))
        assert fleet.returncode == 0, out.decode() + fleet_log.read_text()[-3000:]
        assert "30/30 devices finished" in out.decode()
        assert aggregator.wait(timeout=wall(30)) == 0, log.read_text()[-2000:]
    finally:
        for proc in (aggregator, fleet):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    text = log.read_text()
    assert f"resuming crash-me after round {killed_after}" in text
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1)), "every round exactly once"
    final = load_checkpoint(state / "checkpoint.npz")
    assert final is not None and final.round == ROUNDS
    assert final.totals["outcomes"]["completed"] == sum(r["participants"] for r in records)
    assert sum(final.totals["outcomes"].values()) == sum(r["invited"] for r in records)
    assert final.totals["rounds_succeeded"] + final.totals["rounds_failed"] == ROUNDS
    assert all(r["participants"] <= 6 for r in records)
    assert records[-1]["accuracy"] > 0.6
    assert np.isfinite(final.weights).all()
    summary = json.loads((state / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["participants"] == final.totals["outcomes"]["completed"]


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_a_consistent_checkpoint(tmp_path: Path, machine_speed: MachineSpeed) -> None:
    scale, wall = machine_speed.time_scale(IDLE_TIME_SCALE), machine_speed.seconds
    grpc_port, http_port = free_port(), free_port()
    (tmp_path / "job.yaml").write_text(JOB)
    config = tmp_path / "aggregator.yaml"
    config.write_text(
        f"job: job.yaml\nlisten: {{host: 127.0.0.1, port: {grpc_port}}}\nhttp: {{host: 127.0.0.1, port: {http_port}}}\n"
        f"tls: {{generate: true}}\nauth: {{generate: true}}\nstateDir: state\ntimeScale: {scale}\nsettleSeconds: 0.5\n"
    )
    log = tmp_path / "aggregator.log"
    aggregator = start_aggregator(config, log)
    fleet: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: get(http_port, "/readyz")[0] == 200, wall(60), "the aggregator to be ready")
        fleet = subprocess.Popen(
            [str(FEDFLEET), "device-sim", "--aggregator", f"127.0.0.1:{grpc_port}", "--job", str(tmp_path / "job.yaml"),
             "--token-key", str(tmp_path / "token.key"), "--ca", str(tmp_path / "tls/ca.crt"),
             "--time-scale", str(scale)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        metrics = tmp_path / "state/metrics.jsonl"
        wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, wall(60), "two rounds")
        aggregator.send_signal(signal.SIGTERM)
        assert aggregator.wait(timeout=wall(15)) == 3  # stopped before the job's end
    finally:
        for proc in (aggregator, fleet):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "shutting down" in log.read_text()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    ckpt = load_checkpoint(tmp_path / "state/checkpoint.npz")
    assert ckpt is not None and ckpt.round == len(records) < ROUNDS
    assert [r["round"] for r in records] == list(range(1, ckpt.round + 1))
    assert ckpt.totals["outcomes"]["completed"] == sum(r["participants"] for r in records)
    assert not (tmp_path / "state/model.pt").exists()

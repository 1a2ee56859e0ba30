"""The aggregator SIGKILLed again and again — mid-job, right as the job ends, and while a restarted one is
telling devices the job is over — and restarted each time on the same state dir: every one of 100 simulated
devices hears that the job is done, from whichever aggregator process answers it, and `fedfleet device-sim`
exits 0. (Before, an aggregator restarted on a finished run exited at once, and devices that had not heard
the end from the one before gave up.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from aggregator_process import aggregator_config, free_port, get, start_aggregator, start_device_sim, wait_for

from busy_machine import MachineSpeed

ROUNDS = 3
DEVICES = 100
#: Wall seconds per job second on an idle machine (the 20 s deadline is 1 s), stretched by the measured slowdown.
IDLE_TIME_SCALE = 0.05
JOB = f"""\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: kill-restart
spec:
  rounds: {ROUNDS}
  seed: 5
  model: {{architecture: logistic}}
  training: {{localEpochs: 1, batchSize: 10, learningRate: 0.1}}
  cohort: {{clientsPerRound: 10, overSelection: 1.3, minReports: 8, roundDeadlineSeconds: 20}}
  evaluation: {{serverEvery: 0}}
  simulation: {{devices: {DEVICES}, dataset: digits, testSamples: 100, dropoutProbability: 0.2}}
"""
DONE_LINE = "the job is done"

#: The restarts must find the same ports again (see aggregator_process.free_port).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fixed-ports")]


def kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_every_device_hears_the_end_from_any_aggregator_process(tmp_path: Path, machine_speed: MachineSpeed) -> None:
    scale, wall = machine_speed.time_scale(IDLE_TIME_SCALE), machine_speed.seconds
    grpc_port, http_port = free_port(), free_port()
    (tmp_path / "job.yaml").write_text(JOB)
    config = tmp_path / "aggregator.yaml"
    config.write_text(
        aggregator_config("state", grpc_port, http_port, timeScale=scale, settleSeconds=0.5, pollSeconds=2,
                          lingerSeconds=wall(1.5))
    )  # fmt: skip
    state, log, fleet_log = tmp_path / "state", tmp_path / "aggregator.log", tmp_path / "fleet.log"
    metrics = state / "metrics.jsonl"

    def rounds_recorded() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    def told_done() -> int:
        return fleet_log.read_text().count(DONE_LINE) if fleet_log.exists() else 0

    def healthy() -> bool:
        return get(http_port, "/healthz")[0] == 200

    aggregator = start_aggregator(config, log)
    fleet: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: get(http_port, "/readyz")[0] == 200, wall(60), "the aggregator to be ready")
        fleet = start_device_sim(f"127.0.0.1:{grpc_port}", tmp_path / "job.yaml", state, fleet_log,
                                 "--time-scale", str(scale), "--give-up-after", str(wall(60)))  # fmt: skip

        # 1. Mid-job.
        wait_for(lambda: rounds_recorded() >= 1, wall(90), "a first recorded round")
        kill(aggregator)
        aggregator = start_aggregator(config, log)

        # 2. As the job ends: the last round is recorded, while devices that dropped out of it, or are still
        # training as its surplus, are away until its deadline and have not heard the end.
        wait_for(lambda: rounds_recorded() == ROUNDS, wall(120), "the last round to be recorded", every=0.001)
        kill(aggregator)
        told_before_restart = told_done()
        assert told_before_restart < DEVICES, "every device heard the end before the kill: nothing left to test"

        # 3. A restarted aggregator starts on the finished run and tells devices the job is done; it is killed as
        # soon as it has told one, and the next one tells the rest.
        aggregator = start_aggregator(config, log)
        wait_for(lambda: told_done() > told_before_restart, wall(60), "a device to hear the end from a restart")
        if told_done() < DEVICES:
            kill(aggregator)
            wait_for(lambda: not healthy(), wall(10), "the killed aggregator's port to close")
            aggregator = start_aggregator(config, log)

        out, _ = fleet.communicate(timeout=wall(120))
        report = out.decode()
        assert fleet.returncode == 0, report + fleet_log.read_text()[-3000:]
        assert f"{DEVICES}/{DEVICES} devices finished" in report
        assert told_done() == DEVICES
        # The last aggregator waits out its farewell (devices told by the one before never come back) and ends.
        assert aggregator.wait(timeout=wall(60)) == 0, log.read_text()[-3000:]
    finally:
        for process in (aggregator, fleet):
            if process is not None and process.poll() is None:
                kill(process)

    text = log.read_text()
    assert text.count(f"is already complete after round {ROUNDS}") >= 1, text[-3000:]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1)), "every round exactly once"
    assert json.loads((state / "summary.json").read_text())["rounds"] == ROUNDS

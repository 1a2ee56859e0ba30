"""`fedfleet device-sim` at a small time scale against a slow aggregator treats it as slow, not as failed.

The slowness is made, not hoped for: the devices reach a real `fedfleet aggregator` through a proxy that holds
every byte of its answers for 0.4 s (tests/integration/slow_link.py), and the first try of each short call
waits only 0.2 s (`--call-timeout`), so tries certainly run out of time. And devices are away when the job
ends: the round invites all eight devices and closes as soon as five have reported, while the two that
dropped out of it come back only at its deadline — later than the aggregator's `lingerSeconds` (before,
those devices found it gone and device-sim exited 1 with DEADLINE_EXCEEDED failures). Every device must hear
the job is done, and device-sim must exit 0.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from aggregator_process import aggregator_config, start_aggregator, start_device_sim, wait_for
from slow_link import SlowLink

from busy_machine import MachineSpeed
from fedfleet.api.manifest import parse_job
from fedfleet.sim.fleet import device_round_plan
from fedfleet.sim.task import build_task

ROUNDS = 1  # the last round is the one that matters
DEVICES = 8
#: Wall seconds per job second on an idle machine (the 30 s deadline is 3 s), stretched by the measured slowdown.
IDLE_TIME_SCALE = 0.1
LATENCY_SECONDS = 0.4
CALL_TIMEOUT_SECONDS = 0.2
# Every device is invited (5 × 1.6 = 8 of 8), so who drops out is fixed by the seed.
JOB = f"""\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: slow-link
spec:
  rounds: {ROUNDS}
  seed: 1
  model: {{architecture: logistic}}
  training: {{localEpochs: 1, batchSize: 10, learningRate: 0.1}}
  cohort: {{clientsPerRound: 5, overSelection: 1.6, minReports: 4, roundDeadlineSeconds: 30}}
  evaluation: {{serverEvery: 1}}
  simulation: {{devices: {DEVICES}, dataset: digits, testSamples: 100, dropoutProbability: 0.3}}
"""
LISTENING = re.compile(r"aggregator listening: gRPC 127\.0\.0\.1:(\d+)")

pytestmark = pytest.mark.slow


def test_device_sim_against_a_slow_aggregator_retries_and_every_device_hears_the_end(
    tmp_path: Path, machine_speed: MachineSpeed
) -> None:
    job = parse_job(JOB)
    fleet = build_task(job.spec).fleet
    assert job.spec.cohort.invited == DEVICES
    away_at_the_end = [i for i, p in enumerate(fleet) if device_round_plan(job.spec, p, ROUNDS, i) is None]
    assert away_at_the_end, "the seed must have devices drop out of the last round"
    assert DEVICES - len(away_at_the_end) > job.spec.cohort.clients_per_round, "the round must fill before its deadline"

    scale, wall = machine_speed.time_scale(IDLE_TIME_SCALE), machine_speed.seconds
    (tmp_path / "job.yaml").write_text(JOB)
    config = tmp_path / "aggregator.yaml"
    # The round starts once all eight are there; the aggregator's own farewell is shorter than the devices'
    # absence, and it must wait for them anyway.
    config.write_text(
        aggregator_config("state", 0, None, timeScale=scale, minDevices=DEVICES, settleSeconds=0.5, pollSeconds=2,
                          lingerSeconds=1)
    )  # fmt: skip
    state, log, fleet_log = tmp_path / "state", tmp_path / "aggregator.log", tmp_path / "fleet.log"
    aggregator = start_aggregator(config, log)
    sim: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: LISTENING.search(log.read_text()), wall(60), "the aggregator to listen")
        match = LISTENING.search(log.read_text())
        assert match is not None
        with SlowLink(int(match.group(1)), LATENCY_SECONDS) as link:
            sim = start_device_sim(f"127.0.0.1:{link.port}", tmp_path / "job.yaml", state, fleet_log,
                                   "--time-scale", str(scale), "--call-timeout", str(CALL_TIMEOUT_SECONDS),
                                   "--give-up-after", str(wall(60)))  # fmt: skip
            out, _ = sim.communicate(timeout=wall(120))
        assert aggregator.wait(timeout=wall(30)) == 0, log.read_text()[-3000:]
    finally:
        for process in (aggregator, sim):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    report, errors = out.decode(), fleet_log.read_text()
    assert sim.returncode == 0, report + errors[-3000:]
    assert f"{DEVICES}/{DEVICES} devices finished" in report, report
    tried_again = re.search(r"calls tried again after [^;]*?\b(\d+) DEADLINE_EXCEEDED", report)
    assert tried_again is not None and int(tried_again.group(1)) > 0, f"no try ran out of time: {report}"
    assert "fedfleet:" not in errors, "device-sim reports no failure"
    assert errors.count("the job is done") == DEVICES
    records = (state / "metrics.jsonl").read_text().splitlines()
    assert len(records) == ROUNDS

"""1,000 simulated devices against one aggregator process over gRPC with TLS, on this machine.

    python benchmarks/bench_grpc_fleet.py [--devices 1000] [--rounds 10] [--clients 100] [--time-scale 0.02]

The aggregator is `fedfleet aggregator` in its own process (as in a pod); the devices are the simulated
fleet (`fedfleet device-sim`'s code) in this process, each with its own TLS connection and token.
Reports check-in latency as devices see it (p50, p99): at the job's start, where every device opens its TLS
connection at the same moment; and from probes before the job (devices that never consent): 1,000 new
connections at once, the same again on open connections, and one call at a time. Also the aggregator's own
handling time, rounds per minute, and whether every round completed; exits 1 when a round failed or a
device did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

FEDFLEET = Path(sys.executable).with_name("fedfleet")

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: bench-fleet
spec:
  rounds: {rounds}
  seed: 1
  model: {{architecture: {model}}}
  training: {{localEpochs: 1, batchSize: 10, learningRate: 0.05}}
  cohort: {{clientsPerRound: {clients}, overSelection: 1.3, minReports: {min_reports}, roundDeadlineSeconds: 120}}
  evaluation: {{serverEvery: 1}}
  simulation: {{devices: {devices}, dataset: mnist5k, testSamples: 1000, dropoutProbability: 0.05}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(port: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the aggregator did not become ready")


def _ms(values: list[float]) -> dict[str, float]:
    a = np.array(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2)}


async def probe_check_ins(target: str, key: bytes, ca: bytes, job: str, n: int) -> dict[str, Any]:
    """Check-in latency apart from the fleet: n new devices (that never consent) at once, each with its TLS
    handshake; the same n again on their open connections at once; then one at a time."""
    from fedfleet.device.client import Capabilities, DeviceClient
    from fedfleet.security.tokens import issue_token

    clients = [
        DeviceClient(target, device_id=f"probe-{i}", token=issue_token(key, job, f"probe-{i}", 600),
                     root_certificates=ca)
        for i in range(n)
    ]  # fmt: skip

    async def timed(client: DeviceClient) -> float:
        started = time.perf_counter()
        await client.check_in(consent=False, capabilities=Capabilities())  # never selected
        return time.perf_counter() - started

    try:
        cold = await asyncio.gather(*(timed(c) for c in clients))
        warm = await asyncio.gather(*(timed(c) for c in clients))
        alone = [await timed(c) for c in clients[:200]]
    finally:
        for c in clients:
            await c.close()
    return {"new_connections_at_once": _ms(cold), "open_connections_at_once": _ms(warm), "one_at_a_time": _ms(alone)}


def checkin_quantiles(text: str) -> tuple[float, float]:
    """Upper bounds of the p50 and p99 of the aggregator's own CheckIn handling time (histogram buckets), ms."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fedfleet_rpc_duration_seconds_bucket" and s.labels.get("method") == "CheckIn"
    )
    total = buckets[-1][1]

    def bound(q: float) -> float:
        return next(le for le, count in buckets if count >= q * total) * 1000

    return bound(0.5), bound(0.99)


def run(devices: int, rounds: int, clients: int, time_scale: float, model: str) -> dict[str, Any]:
    from fedfleet.api.manifest import load_job
    from fedfleet.runtime.threads import configure_torch_threads
    from fedfleet.security.tokens import read_key
    from fedfleet.sim.network_fleet import FleetSettings, run_fleet

    configure_torch_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job_path = root / "job.yaml"
        job_path.write_text(
            JOB.format(rounds=rounds, model=model, clients=clients, min_reports=int(clients * 0.8), devices=devices)
        )
        grpc_port, http_port = free_port(), free_port()
        (root / "aggregator.yaml").write_text(
            f"job: job.yaml\nlisten: {{host: 127.0.0.1, port: {grpc_port}}}\n"
            f"http: {{host: 127.0.0.1, port: {http_port}}}\n"
            "tls: {generate: true}\nauth: {generate: true}\nstateDir: state\n"
            f"timeScale: {time_scale}\nsettleSeconds: 2\npollSeconds: 10\nlingerSeconds: 10\n"
        )
        log = (root / "aggregator.log").open("wb")
        aggregator = subprocess.Popen(
            [str(FEDFLEET), "aggregator", "--config", str(root / "aggregator.yaml")], stdout=log, stderr=log
        )
        try:
            wait_ready(http_port)
            job = load_job(job_path)
            settings = FleetSettings(
                target=f"127.0.0.1:{grpc_port}",
                token_key=read_key(root / "token.key"),
                ca_pem=(root / "tls/ca.crt").read_bytes(),
                time_scale=time_scale,
                give_up_after=120.0,
            )
            from fedfleet.security.tokens import job_identity

            probes = asyncio.run(
                probe_check_ins(settings.target, settings.token_key, settings.ca_pem, job_identity("bench-fleet"),
                                devices)
            )  # fmt: skip
            started = time.monotonic()
            report = asyncio.run(run_fleet(job, settings))
            fleet_seconds = time.monotonic() - started
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
                server_side = checkin_quantiles(r.read().decode())  # scraped while the aggregator lingers
            code = aggregator.wait(timeout=60)
        finally:
            if aggregator.poll() is None:
                aggregator.kill()
                aggregator.wait()
            log.close()
        records = [json.loads(line) for line in (root / "state/metrics.jsonl").read_text().splitlines()]
        round_seconds = [r["wall_seconds"] for r in records]
        latencies = np.array(report.check_in_seconds)
        first = latencies[: min(len(latencies), devices)]
        return {
            "devices": devices,
            "rounds": len(records),
            "rounds_failed": sum(not r["succeeded"] for r in records),
            "devices_finished": report.completed,
            "errors": report.errors[:3],
            "aggregator_exit": code,
            "check_ins": int(latencies.size),
            "check_in_p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
            "check_in_p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
            "check_in_max_ms": round(float(latencies.max()) * 1000, 1),
            "first_check_ins": int(first.size),
            "check_in_probes_before_the_job": probes,
            "server_check_in_p50_ms_at_most": server_side[0],
            "server_check_in_p99_ms_at_most": server_side[1],
            "round_seconds_median": round(float(np.median(round_seconds)), 3),
            "rounds_per_minute": round(60 * len(records) / sum(round_seconds), 1),
            "job_seconds_end_to_end": round(fleet_seconds, 1),
            "rounds_per_minute_end_to_end": round(60 * len(records) / fleet_seconds, 1),
            "participants": sum(r["participants"] for r in records),
            "final_accuracy": records[-1]["accuracy"] if records else None,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--model", choices=("2nn", "logistic", "cnn"), default="2nn")
    args = parser.parse_args()
    result = run(args.devices, args.rounds, args.clients, args.time_scale, args.model)
    print(json.dumps(result, indent=2))
    ok = result["rounds"] == args.rounds and result["rounds_failed"] == 0 and result["devices_finished"] == args.devices
    print(
        f"{'PASS' if ok else 'FAIL'}: {result['rounds']} rounds with {args.devices} devices; check-in p50 "
        f"{result['check_in_p50_ms']} ms, p99 {result['check_in_p99_ms']} ms; {result['rounds_per_minute']} rounds/min"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

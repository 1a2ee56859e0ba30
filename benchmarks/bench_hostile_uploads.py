"""What a hostile device with a valid token costs a real aggregator process (TLS, loopback).

    python benchmarks/bench_hostile_uploads.py [--headers 4] [--streams 200]

Starts `fedfleet aggregator` in its own process on a small job, then, as devices holding valid tokens:
1. sends `--headers` upload streams whose UpdateHeader carries 1,000,000 empty TensorSpecs (2 MB on the
   wire, ~115 MB of objects if parsed), from a device outside any cohort;
2. opens `--streams` upload streams from one device that each send a header declaring a whole update, then
   stall.
It prints the aggregator's RSS (from /proc) before and after each attack, the status codes the attacker got,
and whether /healthz kept answering. Bars: RSS grows by less than 50 MB over each attack, every stream is
refused with a precise status, and /healthz answers within 1 s throughout; the script exits 1 otherwise.
It only talks to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc

FEDFLEET = Path(sys.executable).with_name("fedfleet")
JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata: {name: hostile}
spec:
  rounds: 1000
  seed: 1
  model: {architecture: 2nn}
  cohort: {clientsPerRound: 2, minReports: 2, roundDeadlineSeconds: 3600}
  evaluation: {serverEvery: 0}
  simulation: {devices: 10, dataset: mnist5k, testSamples: 100}
"""
RSS_BAR_BYTES = 50 << 20


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def padded_header_chunk(round_number: int, specs: int = 1_000_000) -> bytes:
    header = varint(1 << 3) + varint(round_number) + bytes([6 << 3 | 2, 0]) * specs
    return bytes([1 << 3 | 2]) + varint(len(header)) + header


def stalled_header_chunk(round_number: int, total_bytes: int) -> bytes:
    header = varint(1 << 3) + varint(round_number) + varint(7 << 3) + varint(total_bytes)
    return bytes([1 << 3 | 2]) + varint(len(header)) + header


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def healthz_seconds(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        response.read()
    return time.perf_counter() - started


def issue_token(key: Path, device: str) -> str:
    done = subprocess.run(
        [str(FEDFLEET), "token", "issue", "--key", str(key), "--job", "hostile", "--device", device],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


async def attack(port: int, ca: bytes, token: str, chunks: list[bytes], hold: float) -> Counter[str]:
    """Send each stream (one chunk, then stall for `hold` seconds) concurrently; count the statuses."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    outcomes: Counter[str] = Counter()
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        upload = channel.stream_unary("/fedfleet.v1.Aggregator/UploadUpdate")

        async def one(chunk: bytes) -> None:
            async def stream():  # type: ignore[no-untyped-def]
                yield chunk
                await asyncio.sleep(hold)

            try:
                await upload(stream(), metadata=(("authorization", f"Bearer {token}"),), timeout=hold + 60)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                outcomes[err.code().name] += 1

        await asyncio.gather(*(one(c) for c in chunks))
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--headers", type=int, default=4)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="uploadIdleSeconds; 0 leaves it unset")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        (state / "job.yaml").write_text(JOB)
        (state / "aggregator.yaml").write_text(
            "job: job.yaml\nlisten: {host: 127.0.0.1, port: 0}\nhttp: {host: 127.0.0.1, port: 0}\n"
            "tls: {generate: true}\nauth: {generate: true}\nstateDir: state\n"
            + (f"uploadIdleSeconds: {args.idle_seconds}\n" if args.idle_seconds else "")
        )
        log = (state / "aggregator.log").open("w")
        server = subprocess.Popen(
            [str(FEDFLEET), "aggregator", "--config", str(state / "aggregator.yaml"), "--log-level", "INFO"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            ports = wait_for_ports(state / "aggregator.log", 120)
            if ports is None:
                print("the aggregator did not start:", (state / "aggregator.log").read_text()[-2000:])
                return 1
            grpc_port, http_port = ports
            ca = (state / "tls/ca.crt").read_bytes()
            outsider = issue_token(state / "token.key", "dev-outsider")
            ok = True
            base = rss(server.pid)
            print(f"aggregator RSS at rest: {base / 2**20:.0f} MB; /healthz {healthz_seconds(http_port) * 1000:.0f} ms")

            statuses = asyncio.run(attack(grpc_port, ca, outsider, [padded_header_chunk(1)] * args.headers, 0.5))
            grown = rss(server.pid) - base
            health = healthz_seconds(http_port)
            print(f"{args.headers} headers of 1,000,000 TensorSpecs: {dict(statuses)}; RSS +{grown / 2**20:.0f} MB;"
                  f" /healthz {health * 1000:.0f} ms")  # fmt: skip
            ok &= grown < RSS_BAR_BYTES and "OK" not in statuses and "UNKNOWN" not in statuses and health < 1

            base = rss(server.pid)
            insider = issue_token(state / "token.key", "dev-00000")
            round_number = asyncio.run(open_round(grpc_port, ca, state / "token.key"))
            chunks = [stalled_header_chunk(round_number, 199_210 * 4)] * args.streams
            statuses = asyncio.run(attack(grpc_port, ca, insider, chunks, 15.0))
            grown = rss(server.pid) - base
            health = healthz_seconds(http_port)
            print(f"{args.streams} stalled streams from one device: {dict(statuses)}; RSS +{grown / 2**20:.0f} MB;"
                  f" /healthz {health * 1000:.0f} ms")  # fmt: skip
            ok &= grown < RSS_BAR_BYTES and "OK" not in statuses and "UNKNOWN" not in statuses and health < 1
            return 0 if ok else 1
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


async def open_round(port: int, ca: bytes, key: Path) -> int:
    """Two honest devices check in, so round 1 opens with dev-00000 in its cohort; returns its number."""
    from fedfleet.device.client import Capabilities, DeviceClient
    from fedfleet.device.retry import Backoff

    clients = [
        DeviceClient(f"127.0.0.1:{port}", device_id=d, token=issue_token(key, d), root_certificates=ca,
                     backoff=Backoff(), give_up_after=60.0)
        for d in ("dev-00000", "dev-00001")
    ]  # fmt: skip
    try:
        for client in clients:
            await client.check_in(consent=True, capabilities=Capabilities(train_examples=50, holdout_examples=0))
        for _ in range(60):
            task = await clients[0].next_task(wait_seconds=2.0)
            if task.kind == "train":
                return task.round
        raise RuntimeError("round 1 did not open")
    finally:
        for client in clients:
            await client.close()


def wait_for_ports(log: Path, seconds: float) -> tuple[int, int] | None:
    """The gRPC and HTTP ports from the aggregator's 'listening' log line."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "aggregator listening: gRPC" in line:
                words = line.replace(",", " ").split()
                grpc_port = int(words[words.index("gRPC") + 1].rsplit(":", 1)[1])
                return grpc_port, int(words[words.index("HTTP") + 1])
        time.sleep(0.2)
    return None


if __name__ == "__main__":
    sys.exit(main())

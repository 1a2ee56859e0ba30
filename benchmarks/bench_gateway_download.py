"""100 devices downloading one 10 MB model artifact at once from one fleet gateway process, on this machine.

    python benchmarks/bench_gateway_download.py [--devices 100] [--clients 4] [--megabytes 10]
        [--out benchmarks/results/gateway_download.json]

The gateway is `fedfleet gateway` in its own process (TLS, generated keys), its artifact published through
FleetAdmin and named by the fleet's view as the stable version. The devices live in `--clients` separate
processes, each device with its own token and TLS connection. Every device checks in first (so the TLS
handshakes are done and each learns its version and size from the gateway), then all start
DownloadArtifact at the same moment. Each checks that every chunk starts where the previous one ended and
that the bytes it got hash to the digest it was assigned.

Reports the aggregate throughput (bytes of all downloads over the time from the common start to the last
finish), each download's time (p50, max), the gateway's RSS before, sampled during (its maximum) and its peak,
and its CPU time. Exits 1 when a download failed or did not match its digest. Writes the figures as JSON
(default benchmarks/results/gateway_download.json). It only talks to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from fedfleet.models.artifact import digest_of
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from fedfleet.rollout.assignment import FleetView
from fedfleet.security.signing import SigningKey
from gateway_process import (
    FLEET,
    Admin,
    ClientProcess,
    GatewayProcess,
    device_channel_options,
    device_metadata,
    machine,
    mb,
    model_artifact,
    percentile_ms,
    raise_open_file_limit,
    receive_command,
    signed_release,
    start_clients,
    start_gateway,
    write_result,
)

ATTRIBUTES = {"deviceClass": "phone", "os": "android", "region": "eu"}
CALL_SECONDS = 30.0
#: How often the gateway's RSS is sampled while the downloads run.
SAMPLE_SECONDS = 0.05


class Downloaders:
    """The devices of one client process, each with its own connection and token."""

    def __init__(self, target: str, ca_pem: bytes, token_key: bytes, ids: list[str]) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        self.channels = [grpc.aio.secure_channel(target, credentials, device_channel_options()) for _ in ids]
        self.stubs = [rpc.FleetStub(c) for c in self.channels]
        self.metadata = [device_metadata(token_key, d) for d in ids]
        self.assigned: list[tuple[str, int]] = []

    async def check_in(self) -> list[tuple[str, int]]:
        """Every device checks in: its TLS connection is up and it knows its version and size."""

        async def one(i: int) -> tuple[str, int]:
            reply = await self.stubs[i].CheckIn(
                pb.FleetCheckInRequest(attributes=ATTRIBUTES), metadata=self.metadata[i], timeout=CALL_SECONDS,
                wait_for_ready=True,
            )  # fmt: skip
            return str(reply.assignment.version), int(reply.assignment.size)

        self.assigned = list(await asyncio.gather(*(one(i) for i in range(len(self.stubs)))))
        return self.assigned

    async def download(self, start_at: float, timeout: float) -> list[dict[str, Any]]:
        """Every device downloads its version from offset 0, all starting at `start_at`."""
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        return list(await asyncio.gather(*(self._one(i, timeout) for i in range(len(self.stubs)))))

    async def _one(self, i: int, timeout: float) -> dict[str, Any]:
        digest, size = self.assigned[i]
        started = time.monotonic()
        sha, received, chunks, error = hashlib.sha256(), 0, 0, None
        call = self.stubs[i].DownloadArtifact(
            pb.DownloadArtifactRequest(digest=digest, offset=0), metadata=self.metadata[i], timeout=timeout
        )
        try:
            async for chunk in call:
                if chunk.offset != received or chunk.total_size != size:
                    error = f"chunk at {chunk.offset} of {chunk.total_size} bytes, expected {received} of {size}"
                    call.cancel()
                    break
                sha.update(chunk.data)
                received += len(chunk.data)
                chunks += 1
        except grpc.aio.AioRpcError as err:
            error = err.code().name
        finished = time.monotonic()
        matches = error is None and received == size and f"sha256:{sha.hexdigest()}" == digest
        return {"bytes": received, "chunks": chunks, "started": started, "finished": finished,
                "digest_ok": matches, "error": error}  # fmt: skip

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def download_client(conn: Connection, **kwargs: Any) -> None:
    """A client process: answers the parent's commands check_in / download / stop."""
    try:
        raise_open_file_limit()
        asyncio.run(_serve(conn, **kwargs))
    except Exception as exc:  # the parent shows it; a traceback in a child would be lost
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


async def _serve(conn: Connection, *, target: str, ca_pem: bytes, token_key: bytes, ids: list[str]) -> None:
    devices = Downloaders(target, ca_pem, token_key, ids)
    try:
        while True:
            command, arguments = await receive_command(conn)
            if command == "stop":
                return
            if command == "check_in":
                conn.send(await devices.check_in())
            elif command == "download":
                conn.send(await devices.download(**arguments))
    finally:
        await devices.close()


def wait_sampling(clients: list[ClientProcess], gateway: GatewayProcess, timeout: float) -> tuple[list[Any], int]:
    """Every client's answer, sampling the gateway's RSS meanwhile; (answers, the largest RSS seen)."""
    answers: dict[int, Any] = {}
    largest = gateway.rss()
    deadline = time.monotonic() + timeout
    while len(answers) < len(clients):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the downloads did not finish within {timeout:.0f}s")
        for k, client in enumerate(clients):
            if k not in answers and client.conn.poll():
                answers[k] = client.receive(1)
        largest = max(largest, gateway.rss())
        time.sleep(SAMPLE_SECONDS)
    return [answers[k] for k in range(len(clients))], largest


async def setup(gateway: GatewayProcess, model: bytes) -> None:
    async with Admin(gateway) as admin:
        await admin.publish(model)
        view = FleetView(FLEET, digest_of(model), (), 1)
        await admin.put_view(view, {digest_of(model): signed_release(model, SigningKey.generate())})


def run(devices: int, clients: int, megabytes: float, timeout: float) -> dict[str, Any]:
    measured_on = machine()
    raise_open_file_limit()
    model = model_artifact("download", int(megabytes * 2**20))
    digest = digest_of(model)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-download-") as tmp:
        gateway = start_gateway(Path(tmp))
        processes: list[ClientProcess] = []
        try:
            asyncio.run(setup(gateway, model))
            ids = [f"device-{i:05d}" for i in range(devices)]
            processes = start_clients(
                download_client,
                [dict(target=gateway.target, ca_pem=gateway.ca_pem, token_key=gateway.token_key, ids=ids[k::clients])
                 for k in range(clients)],
            )  # fmt: skip
            for process in processes:
                process.send("check_in")
            assigned = [a for process in processes for a in process.receive(60 + devices)]
            rss_before, cpu_before = gateway.rss(), gateway.cpu_seconds()
            start_at = time.monotonic() + 1.0  # every process has its command by then
            for process in processes:
                process.send("download", start_at=start_at, timeout=timeout)
            answers, rss_during = wait_sampling(processes, gateway, timeout + 60)
            gateway_cpu = gateway.cpu_seconds() - cpu_before
            downloads = [d for answer in answers for d in answer]
            total = sum(d["bytes"] for d in downloads)
            wall = max(d["finished"] for d in downloads) - start_at
            seconds = [d["finished"] - d["started"] for d in downloads]
            result: dict[str, Any] = {
                "devices": devices,
                "client_processes": clients,
                "artifact_bytes": len(model),
                "devices_assigned_the_artifact": sum(a == (digest, len(model)) for a in assigned),
                "downloads_complete_and_digest_ok": sum(d["digest_ok"] for d in downloads),
                "download_errors": dict(Counter(d["error"] for d in downloads if d["error"])),
                "chunks_per_download": max(d["chunks"] for d in downloads),
                "bytes_total_mb": mb(total),
                "wall_seconds": round(wall, 2),
                "aggregate_mb_per_second": round(total / 2**20 / wall, 1),
                "per_download_p50_ms": percentile_ms(seconds, 50),
                "per_download_max_ms": round(max(seconds) * 1000, 1),
                "gateway_rss_before_mb": mb(rss_before),
                "gateway_rss_during_max_mb": mb(rss_during),
                "gateway_rss_after_mb": mb(gateway.rss()),
                "gateway_peak_rss_mb": mb(gateway.peak_rss()),
                "gateway_cpu_seconds": round(gateway_cpu, 2),
            }
        finally:
            for process in processes:
                process.close()
            exit_code = gateway.stop()
        result["gateway_exit"] = exit_code
        result["machine"] = measured_on
        return result


def bars(result: dict[str, Any]) -> list[str]:
    missed = []
    if result["devices_assigned_the_artifact"] != result["devices"]:
        missed.append(f"only {result['devices_assigned_the_artifact']} devices were assigned the artifact")
    if result["downloads_complete_and_digest_ok"] != result["devices"]:
        missed.append(
            f"only {result['downloads_complete_and_digest_ok']} of {result['devices']} downloads complete with the "
            f"right digest; errors {result['download_errors']}"
        )
    if result["gateway_exit"] != 0:
        missed.append(f"the gateway exited {result['gateway_exit']} on SIGTERM")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4, help="client processes the devices are spread over")
    parser.add_argument("--megabytes", type=float, default=10.0, help="size of the artifact, MiB")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each download may take")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/...)")
    args = parser.parse_args()
    if args.devices < 1 or args.clients < 1:
        parser.error("--devices and --clients must be ≥ 1")
    if not 0.01 <= args.megabytes <= 200:
        parser.error("--megabytes must be within [0.01, 200]")
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    result = run(args.devices, min(args.clients, args.devices), args.megabytes, args.timeout)
    missed = bars(result)
    result["bars_missed"] = missed
    path = write_result("gateway_download", result, args.out)
    for name, value in result.items():
        print(f"{name}: {value}")
    print(
        f"{'FAIL' if missed else 'PASS'}: {result['devices']} downloads of {mb(result['artifact_bytes'])} MB at once: "
        f"{result['aggregate_mb_per_second']} MB/s aggregate; gateway RSS {result['gateway_rss_before_mb']} MB "
        f"before, at most {result['gateway_rss_during_max_mb']} MB during"
        + "".join(f"\n  missed: {m}" for m in missed)
        + f"\n  written to {path}"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

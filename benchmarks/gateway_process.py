"""What the gateway benchmarks share: one real `fedfleet gateway` process (TLS and keys generated on start),
its resident memory and CPU time read from /proc, the operator's side of FleetAdmin (publish an artifact, put
a fleet view with releases signed by a real Ed25519 key), valid model artifacts of a chosen size, device
tokens, and client processes that each hold their own event loop.

The gateway runs as `python -m fedfleet.cli gateway`, so it imports the same fedfleet as this script.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedfleet.models.artifact import (
    ArtifactHeader,
    ModelArtifact,
    ModelMetadata,
    ReleaseRecord,
    digest_of,
    encode,
)
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from fedfleet.rollout.assignment import FleetView
from fedfleet.security.signing import SigningKey
from fedfleet.security.tokens import fleet_identity, issue_token, read_key

FLEET = "default"
#: How long the gateway may take to print its listening line (about a second on an idle machine).
START_SECONDS = 120.0
STOP_SECONDS = 30.0
PUBLISH_CHUNK_BYTES = 1 << 20
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: How the gateway is run: the `fedfleet` command of this interpreter (an experiment may wrap it).
FEDFLEET_COMMAND = [sys.executable, "-m", "fedfleet.cli"]


def raise_open_file_limit() -> int:
    """Soft limit on open files raised to the hard one: thousands of connections need as many descriptors.
    Children (the gateway, client processes) inherit it. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status_bytes(pid: int, field: str) -> int:
    """A memory figure of /proc/<pid>/status (VmRSS: resident now, VmHWM: the peak) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mb(n: float) -> float:
    return round(n / 2**20, 1)


def percentile_ms(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 1) if values else math.nan


# ---- the gateway process ------------------------------------------------------------------------------------


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    root: Path
    grpc_port: int
    http_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def ca_pem(self) -> bytes:
        return (self.root / "tls/ca.crt").read_bytes()

    @property
    def token_key(self) -> bytes:
        return read_key(self.root / "token.key")

    @property
    def admin_secret(self) -> str:
        return read_key(self.root / "admin.token").hex()  # what the gateway expects as the admin bearer

    def rss(self) -> int:
        return proc_status_bytes(self.pid, "VmRSS")

    def peak_rss(self) -> int:
        return proc_status_bytes(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample of the gateway's /metrics, or None when it is not exported."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=30) as response:
            text = response.read().decode()
        wanted = dict(labels or {})
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return float(sample.value)
        return None

    def log_tail(self, chars: int = 3000) -> str:
        return (self.root / "gateway.log").read_text(errors="replace")[-chars:]

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code (killed after STOP_SECONDS)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def gateway_config(*, max_watch_streams: int, keepalive_seconds: float, chunk_bytes: int) -> str:
    return (
        "listen: {host: 127.0.0.1, port: 0}\nhttp: {host: 127.0.0.1, port: 0}\n"
        "tls: {generate: true}\nauth: {generate: true}\n"
        "artifactDir: artifacts\nstateDir: state\nfleets: [default]\n"
        f"watchKeepaliveSeconds: {keepalive_seconds}\n"
        f"limits: {{maxWatchStreams: {max_watch_streams}, downloadChunkBytes: {chunk_bytes}}}\n"
    )


def start_gateway(
    root: Path,
    *,
    max_watch_streams: int = 20_000,
    keepalive_seconds: float = 30.0,
    chunk_bytes: int = 256 << 10,
    profile: Path | None = None,
) -> GatewayProcess:
    """`fedfleet gateway --config` in its own process on 127.0.0.1, once it listens. With `profile`, the
    process runs under cProfile and writes its statistics there when it stops. Raises RuntimeError with the
    end of its log when it does not start."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "gateway.yaml"
    config.write_text(gateway_config(max_watch_streams=max_watch_streams, keepalive_seconds=keepalive_seconds,
                                     chunk_bytes=chunk_bytes))  # fmt: skip
    log_path = root / "gateway.log"
    with log_path.open("wb") as log:
        profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
        process = subprocess.Popen(
            [FEDFLEET_COMMAND[0], *profiler, *FEDFLEET_COMMAND[1:], "gateway", "--config", str(config),
             "--log-level", "INFO"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        for line in log_path.read_text(errors="replace").splitlines():
            if "gateway listening: gRPC" in line:
                words = line.replace(",", " ").split()
                grpc_port = int(words[words.index("gRPC") + 1].rsplit(":", 1)[1])
                return GatewayProcess(process, root, grpc_port, int(words[words.index("HTTP") + 1]))
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
        process.wait()
    raise RuntimeError(f"the gateway did not start (exit {process.poll()}):\n{log_path.read_text()[-3000:]}")


# ---- the operator's side ------------------------------------------------------------------------------------


def model_artifact(tag: str, size: int) -> bytes:
    """A valid model artifact (softmax regression on 1 x s x s inputs) of about `size` bytes (a little less),
    its weights seeded by `tag`: different tags give different digests."""
    side = max(1, math.isqrt(max(0, size - 600) // 8))
    n = side * side
    header = ArtifactHeader(
        architecture="logistic",
        image_shape=(1, side, side),
        num_classes=2,
        layout=(("out.weight", (2, n)), ("out.bias", (2,))),
        metadata=ModelMetadata(
            job="bench/gateway", round=1, accuracy=0.9, epsilon=None, created="2026-11-29T00:00:00Z", source=tag
        ),
    )
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big"))
    return encode(ModelArtifact(header, rng.standard_normal(2 * n + 2).astype(np.float32)))


def signed_release(data: bytes, key: SigningKey, rollout: str = "bench/gateway") -> pb.SignedRelease:
    """The release the operator would sign for `data`."""
    record = ReleaseRecord(
        rollout=rollout, revision=1, version=digest_of(data), digest=digest_of(data), size=len(data),
        architecture="logistic", key_id=key.key_id, issued_at="2026-11-29T00:00:00Z",
    )  # fmt: skip
    signature = key.sign(record.signing_message())
    return pb.SignedRelease(record=record.canonical_bytes(), signature=signature, key_id=key.key_id)


class Admin:
    """FleetAdmin as the operator calls it: one TLS channel with the admin secret."""

    def __init__(self, gateway: GatewayProcess) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=gateway.ca_pem)
        self._channel = grpc.aio.secure_channel(gateway.target, credentials)
        self._stub = rpc.FleetAdminStub(self._channel)
        self._metadata = (("authorization", f"Bearer {gateway.admin_secret}"),)

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()

    async def publish(self, data: bytes) -> str:
        async def chunks() -> AsyncIterator[pb.PublishModelChunk]:
            yield pb.PublishModelChunk(header=pb.PublishModelHeader(digest=digest_of(data), size=len(data)))
            for at in range(0, len(data), PUBLISH_CHUNK_BYTES):
                yield pb.PublishModelChunk(data=data[at : at + PUBLISH_CHUNK_BYTES])

        reply = await self._stub.PublishModel(chunks(), metadata=self._metadata, timeout=120)
        return str(reply.digest)

    async def put_view(self, view: FleetView, releases: Mapping[str, pb.SignedRelease]) -> int:
        request = pb.PutFleetViewRequest(
            fleet=view.fleet, view=json.dumps(view.to_dict()).encode(), releases=dict(releases)
        )
        reply = await self._stub.PutFleetView(request, metadata=self._metadata, timeout=120)
        return int(reply.generation)


def device_token(token_key: bytes, device_id: str, ttl_seconds: float = 86_400.0) -> str:
    """The device's fleet token, as `fedfleet token issue --fleet default` would issue it."""
    return issue_token(token_key, fleet_identity(FLEET), device_id, ttl_seconds)


def device_metadata(token_key: bytes, device_id: str, ttl_seconds: float = 86_400.0) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {device_token(token_key, device_id, ttl_seconds)}"),)


def device_channel_options() -> list[tuple[str, Any]]:
    """A device's own connection: no subchannel shared with other channels of the process, room for a
    download chunk."""
    return [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 4 << 20)]


# ---- client processes ---------------------------------------------------------------------------------------


@dataclass
class ClientProcess:
    """A process of simulated devices driven by commands over a pipe: `ask` sends one, waits for its answer."""

    process: multiprocessing.process.BaseProcess
    conn: Connection

    def send(self, command: str, **arguments: Any) -> None:
        self.conn.send((command, arguments))

    def receive(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"client process {self.process.pid} did not answer within {timeout:.0f}s")
        answer = self.conn.recv()
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"client process {self.process.pid} failed: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.is_alive():
            self.send("stop")
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def start_clients(target: Callable[..., None], arguments: Sequence[dict[str, Any]]) -> list[ClientProcess]:
    """One spawned process per argument set (spawn: gRPC's threads do not survive a fork)."""
    context = multiprocessing.get_context("spawn")
    clients = []
    for kwargs in arguments:
        parent, child = context.Pipe()
        process = context.Process(target=target, args=(child,), kwargs=kwargs, daemon=True)
        process.start()
        child.close()
        clients.append(ClientProcess(process, parent))
    return clients


async def receive_command(conn: Connection) -> tuple[str, dict[str, Any]]:
    """The next command from the parent, without blocking the client's event loop."""
    command, arguments = await asyncio.to_thread(conn.recv)
    return str(command), dict(arguments)


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, and how busy the machine already was (other work shares it)."""
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def write_result(name: str, result: Mapping[str, Any], out: Path | None) -> Path:
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path

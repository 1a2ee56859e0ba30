"""Upload throughput of one large update through fedfleet.v1's chunked UploadUpdate stream, against a plain
TCP socket copy of the same bytes on loopback, measured in the same run.

    python benchmarks/bench_grpc_upload.py [--params 10000000] [--repeats 3] [--chunk-bytes 2097152]

The aggregator side is the real one — TLS gRPC server, token check, the device hub and the round loop (the
update is verified, decoded and folded into a FedAvg round) — in its own process, as in production; the
device side is the SDK's `DeviceClient.upload_update` (float32 encoding, SHA-256, chunking). The baseline
sends the same payload over a plain TCP socket to another process that receives it into a buffer. Both
are timed from the first byte sent to the receiver's answer; the best of `repeats` runs counts. The bar:
gRPC throughput >= 0.5 x TCP throughput; the process exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

BAR = 0.5
JOB_NAME = "bench-upload"


def _spec(rounds: int) -> Any:
    from fedfleet.api.federatedjob import FederatedJobSpec

    return FederatedJobSpec.model_validate(
        {
            "rounds": rounds,
            "cohort": {"clientsPerRound": 1, "roundDeadlineSeconds": 3600},
            "evaluation": {"serverEvery": 0},
            "simulation": {"devices": 1},
        }
    )


def _serve_grpc(params: int, rounds: int, security: Any, state: str, chunk_bytes: int, pipe: Connection) -> None:
    """The aggregator process: the real service for a job whose model is one tensor of `params` values."""
    from grpc_health.v1 import health
    from prometheus_client import CollectorRegistry

    from fedfleet.aggregator.app import create_grpc_server
    from fedfleet.aggregator.guarded_handlers import message_limits
    from fedfleet.aggregator.hub import DeviceHub, HubSettings
    from fedfleet.aggregator.metrics import AggregatorMetrics
    from fedfleet.aggregator.service import AggregatorService
    from fedfleet.aggregator.transport import serve_rounds
    from fedfleet.engine.journal import RunJournal
    from fedfleet.engine.server import FederatedServer
    from fedfleet.security.tokens import TokenVerifier

    async def main() -> None:
        spec = _spec(rounds)
        hub = DeviceHub(
            JOB_NAME,
            spec,
            FederatedServer(spec, np.zeros(params, dtype=np.float32)),
            (("w", (params,)),),
            AggregatorMetrics(CollectorRegistry(), process=False),
            HubSettings(min_devices=1, settle_seconds=0.0, quiet_seconds=0.0),
        )
        journal = RunJournal(Path(state))
        journal.prepare(resume=False)
        service = AggregatorService(hub, TokenVerifier(security.token_key, JOB_NAME), chunk_bytes)
        limits = message_limits(hub.layout, spec.cohort.invited)
        server, port = create_grpc_server(service, health.aio.HealthServicer(), security, "127.0.0.1", 0, limits)
        await server.start()
        pipe.send(port)
        await serve_rounds(hub, journal)
        await asyncio.sleep(0.5)  # let the last answer go out
        await server.stop(1)

    asyncio.run(main())


def measure_grpc(params: int, repeats: int, chunk_bytes: int) -> list[float]:
    from fedfleet.aggregator.app import Security
    from fedfleet.device.client import Capabilities, DeviceClient
    from fedfleet.security.certs import generate_ca, issue_server_cert
    from fedfleet.security.tokens import issue_token, new_key

    ca = generate_ca("bench CA")
    server_cert = issue_server_cert(ca, ["127.0.0.1"])
    security = Security(server_cert.cert_pem, server_cert.key_pem, ca.cert_pem, new_key())
    rounds = repeats + 1  # the first upload warms the connection up and is not counted
    delta = np.random.default_rng(0).standard_normal(params, dtype=np.float32) * np.float32(1e-3)
    layout = (("w", (params,)),)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    with tempfile.TemporaryDirectory() as state:
        proc = ctx.Process(target=_serve_grpc, args=(params, rounds, security, state, chunk_bytes, child))
        proc.start()
        port = parent.recv()

        async def device() -> list[float]:
            token = issue_token(security.token_key, JOB_NAME, "dev-0", 3600)
            times = []
            async with DeviceClient(
                f"127.0.0.1:{port}", device_id="dev-0", token=token, root_certificates=ca.cert_pem,
                chunk_bytes=chunk_bytes,
            ) as client:  # fmt: skip
                await client.check_in(consent=True, capabilities=Capabilities(train_examples=1))
                for _ in range(rounds):
                    task = await client.next_task(wait_seconds=30)
                    while task.kind != "train":
                        task = await client.next_task(wait_seconds=30)
                    started = time.perf_counter()
                    receipt = await client.upload_update(task, delta, 1, 0.0, layout)
                    times.append(time.perf_counter() - started)
                    assert receipt.accepted, receipt
            return times[1:]

        try:
            return asyncio.run(device())
        finally:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()


class _Sink:
    """A servicer that only drains the upload stream: what gRPC with TLS costs by itself."""

    CheckIn = GetTask = DownloadModel = ReportEvaluation = None
    AdvertiseKeys = ShareKeys = UploadMaskedInput = Unmask = None

    async def UploadUpdate(self, chunks: Any, context: Any) -> Any:
        from fedfleet.proto.v1 import aggregator_pb2 as pb

        n = 0
        async for chunk in chunks:
            n += len(chunk.data)
        return pb.UploadResponse(round=n)


def _serve_sink(security: Any, pipe: Connection) -> None:
    import grpc

    from fedfleet.proto import codec
    from fedfleet.proto.v1 import aggregator_pb2_grpc as pb_grpc

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", codec.MAX_MESSAGE_BYTES)])
        pb_grpc.add_AggregatorServicer_to_server(_Sink(), server)
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(security[1], security[0])]))
        await server.start()
        pipe.send(port)
        await server.wait_for_termination()

    asyncio.run(main())


def measure_transport(params: int, repeats: int, chunk_bytes: int, channels: int = 1) -> list[float]:
    """The same chunks, without digest or aggregation, into a servicer that only drains them; with
    `channels` > 1 the payload is split into that many parts sent at once, each on its own TLS connection."""
    import grpc

    from fedfleet.device.client import channel_options
    from fedfleet.proto import codec
    from fedfleet.proto.v1 import aggregator_pb2 as pb
    from fedfleet.proto.v1 import aggregator_pb2_grpc as pb_grpc
    from fedfleet.security.certs import generate_ca, issue_server_cert

    ca = generate_ca("bench CA")
    cert = issue_server_cert(ca, ["127.0.0.1"])
    payload = codec.encode_vector(np.random.default_rng(0).standard_normal(params, dtype=np.float32))
    part = -(-len(payload) // channels)
    parts = [payload[i * part : (i + 1) * part] for i in range(channels)]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_sink, args=((cert.cert_pem, cert.key_pem), child), daemon=True)
    proc.start()
    if not parent.poll(60):  # a sink that died at start must fail the benchmark, not hang it
        proc.kill()
        raise RuntimeError("the do-nothing gRPC sink did not start")
    port = parent.recv()

    async def client() -> list[float]:
        credentials = grpc.ssl_channel_credentials(ca.cert_pem)
        opened = [
            grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=channel_options())
            for _ in range(channels)
        ]
        stubs = [pb_grpc.AggregatorStub(channel) for channel in opened]
        times = []
        try:
            for _ in range(repeats + 1):
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        stub.UploadUpdate(pb.UpdateChunk(data=bytes(p)) for p in codec.split(data, chunk_bytes))
                        for stub, data in zip(stubs, parts, strict=True)
                    )
                )
                times.append(time.perf_counter() - started)
        finally:
            for channel in opened:
                await channel.close()
        return times[1:]

    try:
        return asyncio.run(client())
    finally:
        proc.kill()
        proc.join()


def _serve_tcp(size: int, repeats: int, pipe: Connection) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        pipe.send(listener.getsockname()[1])
        buffer = bytearray(size)
        view = memoryview(buffer)
        for _ in range(repeats + 1):
            conn, _ = listener.accept()
            with conn:
                got = 0
                while got < size:
                    n = conn.recv_into(view[got:])
                    if n == 0:
                        break
                    got += n
                conn.sendall(b"k")


def measure_tcp(size: int, repeats: int) -> list[float]:
    payload = np.random.default_rng(0).standard_normal(size // 4, dtype=np.float32).tobytes()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_tcp, args=(size, repeats, child))
    proc.start()
    port = parent.recv()
    times = []
    try:
        for _ in range(repeats + 1):
            with socket.create_connection(("127.0.0.1", port)) as conn:
                started = time.perf_counter()
                conn.sendall(payload)
                assert conn.recv(1) == b"k"
                times.append(time.perf_counter() - started)
    finally:
        proc.join(timeout=30)
    return times[1:]


TLS_RECORD_BYTES = 16 << 10  # the largest TLS record: what a TLS stack seals at a time


def measure_tls_crypto(size: int, repeats: int) -> float:
    """Best seconds to AES-128-GCM-seal `size` bytes in TLS-record pieces on one core (OpenSSL, AES-NI).

    A TLS upload must seal every byte on the sender and open it on the receiver. Even with the two on
    separate cores, perfectly overlapped, it cannot finish faster than one sealing pass: `size` over this
    time is a ceiling for any TLS transport here, before gRPC framing, copies and the digest.
    """
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=128))
    payload = memoryview(os.urandom(size))
    nonce = bytes(12)  # a benchmark: the key is thrown away, so reusing the nonce leaks nothing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for offset in range(0, size, TLS_RECORD_BYTES):
            aead.encrypt(nonce, payload[offset : offset + TLS_RECORD_BYTES], None)
        best = min(best, time.perf_counter() - started)
    return best


def run(params: int, repeats: int, chunk_bytes: int) -> dict[str, Any]:
    size = params * 4
    tcp = measure_tcp(size, repeats)
    seal = measure_tls_crypto(size, repeats)
    grpc_times = measure_grpc(params, repeats, chunk_bytes)
    transport = measure_transport(params, repeats, chunk_bytes)
    parallel = measure_transport(params, repeats, chunk_bytes, channels=4)
    tcp_best, grpc_best = min(tcp), min(grpc_times)
    return {
        "params": params,
        "bytes": size,
        "chunk_bytes": chunk_bytes,
        "tcp_seconds": [round(t, 4) for t in tcp],
        "grpc_seconds": [round(t, 4) for t in grpc_times],
        "tcp_mb_per_s": round(size / tcp_best / 1e6, 1),
        "grpc_mb_per_s": round(size / grpc_best / 1e6, 1),
        "ratio": round(tcp_best / grpc_best, 3),
        # For the record: gRPC + TLS moving the same chunks into a servicer that does nothing with them.
        "transport_only_seconds": [round(t, 4) for t in transport],
        "transport_only_ratio": round(tcp_best / min(transport), 3),
        # ... and split over 4 TLS connections at once: what parallel streams could buy at best.
        "transport_only_4_channels_ratio": round(tcp_best / min(parallel), 3),
        # The ceiling TLS itself puts on the ratio on this machine (see measure_tls_crypto).
        "tls_seal_mb_per_s": round(size / seal / 1e6, 1),
        "tls_crypto_ceiling_ratio": round(tcp_best / seal, 3),
        "bar": BAR,
    }


def main() -> int:
    from fedfleet.proto import codec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-bytes", type=int, default=codec.DEFAULT_CHUNK_BYTES)
    args = parser.parse_args()
    result = run(args.params, args.repeats, args.chunk_bytes)
    print(json.dumps(result, indent=2))
    passed = result["ratio"] >= BAR
    print(f"{'PASS' if passed else 'FAIL'}: gRPC upload at {result['ratio']:.2f} x plain TCP (bar {BAR})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""`fedfleet gateway --config` as a process: it creates its TLS files and keys, serves health, devices and
/metrics, and exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import fedfleet
from fedfleet.proto.refusals import ERROR_KEY
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from fedfleet.security.tokens import fleet_identity, issue_token, read_key

#: Upper bound for the process to start or stop; each takes about a second on an idle machine.
PROCESS_BOUND_SECONDS = 60.0
CONFIG = """\
listen: {host: 127.0.0.1, port: 0}
http: {host: 127.0.0.1, port: 0}
tls: {generate: true}
auth: {publishToken: publish.token, generate: true}
fleets: [default]
"""


def test_the_gateway_process_starts_serves_and_stops_cleanly(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    source_root = str(Path(fedfleet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "fedfleet.cli", "gateway", "--config", str(tmp_path / "gateway.yaml")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        ports = None
        for line in process.stderr:  # ends when the process does: a failed start shows its error below
            ports = re.search(r"gateway listening: gRPC [\d.]+:(\d+), HTTP (\d+)", line)
            if ports:
                break
        assert ports is not None, f"the gateway did not start (exit {process.poll()})"
        grpc_port, http_port = int(ports.group(1)), int(ports.group(2))
        for name in ("tls/ca.crt", "tls/server.key", "token.key", "admin.token", "publish.token"):
            assert (tmp_path / name).exists(), name

        async def as_a_device() -> None:
            credentials = grpc.ssl_channel_credentials((tmp_path / "tls/ca.crt").read_bytes())
            async with grpc.aio.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="fedfleet.v1.Fleet")
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                token = issue_token(read_key(tmp_path / "token.key"), fleet_identity("default"), "phone-1", 60)
                try:
                    await rpc.FleetStub(channel).GetAssignment(
                        pb.GetAssignmentRequest(), metadata=(("authorization", f"Bearer {token}"),)
                    )
                    raise AssertionError("no view is published yet: the device must keep what it runs")
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    assert dict(err.trailing_metadata() or ())[ERROR_KEY] == "no_fleet_view"

        asyncio.run(as_a_device())
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
        assert 'fedfleet_gateway_refusals_total{method="GetAssignment",reason="no_fleet_view"} 1.0' in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(PROCESS_BOUND_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

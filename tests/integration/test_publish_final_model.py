"""A job's final model goes from a real aggregator process to a real gateway process over gRPC and TLS.

`fedfleet gateway` and `fedfleet aggregator` (with a `gateway` section) run as processes, a simulated fleet
completes the job, and the aggregator publishes: the gateway's store then holds the artifact under the digest
the job's status names, with the job's round, accuracy and ε as metadata. The status patches go to a small
HTTPS stand-in for the API server (the cluster's real one is exercised by tests/e2e/test_gateway_cluster.py).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import fedfleet
from busy_machine import MachineSpeed
from fedfleet.models.artifact import decode
from fedfleet.security.certs import generate_ca, issue_server_cert

NAMESPACE, NAME = "team-a", "publish-me"
JOB = {
    "apiVersion": "fedfleet.io/v1alpha1",
    "kind": "FederatedJob",
    "metadata": {"name": NAME, "namespace": NAMESPACE},
    "spec": {
        "rounds": 2,
        "seed": 4,
        "model": {"architecture": "logistic"},
        "training": {"localEpochs": 1, "batchSize": 16, "learningRate": 0.1},
        "cohort": {"clientsPerRound": 3, "minReports": 2, "roundDeadlineSeconds": 30},
        "evaluation": {"serverEvery": 1},
        "simulation": {"devices": 4, "dataset": "digits", "testSamples": 200},
    },
}
STATUS_PATH = f"/apis/fedfleet.io/v1alpha1/namespaces/{NAMESPACE}/federatedjobs/{NAME}/status"


def env_with_source(**extra: str) -> dict[str, str]:
    """The environment of a child process importing this checkout's fedfleet."""
    source_root = str(Path(fedfleet.__file__).resolve().parents[1])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "FEDFLEET_"))}
    return {**base, "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")]), **extra}


def fedfleet_process(args: list[str], log: IO[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedfleet.cli", *args],
        stdout=log, stderr=subprocess.STDOUT, text=True, env=env_with_source(**env), start_new_session=True,
    )  # fmt: skip


def port_from(log: Path, pattern: str, process: subprocess.Popen[str], seconds: float) -> int:
    """Wait until the process logs the line that says its port."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        found = re.search(pattern, log.read_text())
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} before serving:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} within {seconds}s:\n{log.read_text()[-3000:]}")


class StatusPatches:
    """An HTTPS stand-in for the API server's federatedjobs/status: records each merge patch, answers 200."""

    def __init__(self, tmp_path: Path) -> None:
        self.patches: list[dict[str, Any]] = []
        self.ca = generate_ca("stand-in cluster CA")
        server_pair = issue_server_cert(self.ca, ["127.0.0.1"])
        (tmp_path / "api.crt").write_bytes(server_pair.cert_pem)
        (tmp_path / "api.key").write_bytes(server_pair.key_pem)
        patches = self.patches

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.path == STATUS_PATH and self.headers.get("Authorization") == "Bearer sa-token"
                if ok:
                    patches.append(json.loads(body)["status"])
                self.send_response(200 if ok else 403)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "api.crt", tmp_path / "api.key")
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def pod_root(self, root: Path) -> Path:
        """The service-account files a pod would have, under the node agent's layout."""
        sa = root / "var/run/secrets/kubernetes.io/serviceaccount"
        sa.mkdir(parents=True)
        (sa / "token").write_text("sa-token\n")
        (sa / "ca.crt").write_bytes(self.ca.cert_pem)
        return root


@pytest.fixture
def api(tmp_path: Path) -> Iterator[StatusPatches]:
    patches = StatusPatches(tmp_path)
    try:
        yield patches
    finally:
        patches.server.shutdown()
        patches.server.server_close()


@pytest.mark.slow
def test_a_completed_job_publishes_its_model_to_the_gateway(
    tmp_path: Path, api: StatusPatches, machine_speed: MachineSpeed
) -> None:
    wall = machine_speed.seconds
    gw = tmp_path / "gateway"
    gw.mkdir()
    (gw / "gateway.yaml").write_text(
        "listen: {host: 127.0.0.1, port: 0}\nhttp: null\ntls: {generate: true}\n"
        "auth: {publishToken: publish.token, generate: true}\nfleets: [default]\n"
    )
    agg = tmp_path / "aggregator"
    agg.mkdir()
    (agg / "job.json").write_text(json.dumps(JOB))
    processes: list[subprocess.Popen[str]] = []
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("gateway", "aggregator", "fleet")}
    try:
        gateway = fedfleet_process(["gateway", "--config", str(gw / "gateway.yaml")], logs["gateway"])
        processes.append(gateway)
        gw_port = port_from(tmp_path / "gateway.log", r"gateway listening: gRPC [\d.]+:(\d+)", gateway, wall(60))
        (agg / "aggregator.yaml").write_text(
            "job: job.json\nlisten: {host: 127.0.0.1, port: 0}\nhttp: null\n"
            "tls: {cert: tls/server.crt, key: tls/server.key, ca: tls/ca.crt, generate: true}\n"
            "auth: {tokenKey: token.key, generate: true}\nstateDir: state\nsettleSeconds: 0.5\nlingerSeconds: 2\n"
            # The publish token, as the operator gives aggregators: it publishes and may make no other call.
            f"gateway: {{address: '127.0.0.1:{gw_port}', caFile: {gw}/tls/ca.crt, "
            f"publishTokenFile: {gw}/publish.token}}\n"
        )
        in_a_pod = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port),
            "FEDFLEET_ROOT": str(api.pod_root(tmp_path / "pod")), "FEDFLEET_JOB_NAME": NAME,
            "FEDFLEET_JOB_NAMESPACE": NAMESPACE,
        }  # fmt: skip
        aggregator = fedfleet_process(
            ["aggregator", "--config", str(agg / "aggregator.yaml")], logs["aggregator"], **in_a_pod
        )
        processes.append(aggregator)
        agg_port = port_from(tmp_path / "aggregator.log", r"aggregator listening: gRPC [\d.]+:(\d+)", aggregator,
                             wall(90))  # fmt: skip
        fleet = fedfleet_process(
            ["device-sim", "--aggregator", f"127.0.0.1:{agg_port}", "--job", str(agg / "job.json"),
             "--token-key", str(agg / "token.key"), "--ca", str(agg / "tls/ca.crt"), "--workers", "1",
             "--give-up-after", str(wall(60))],
            logs["fleet"],
        )  # fmt: skip
        processes.append(fleet)
        assert aggregator.wait(wall(240)) == 0, (tmp_path / "aggregator.log").read_text()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
        for log in logs.values():
            log.close()

    final = {k: v for patch in api.patches for k, v in patch.items()}  # merge patches, applied in order
    assert final["outcome"]["reason"] == "RoundsCompleted" and final["round"] == 2
    model = final["model"]
    ending = next(p for p in api.patches if "outcome" in p)
    assert ending["model"] == model  # the outcome and the model arrive together: one patch ends the job

    blob = gw / "artifacts" / "sha256" / model["digest"].removeprefix("sha256:")
    data = blob.read_bytes()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == model["digest"] and len(data) == model["size"]
    meta = decode(data).metadata
    assert (meta.job, meta.round, meta.accuracy) == (f"{NAMESPACE}/{NAME}", 2, model["accuracy"])
    assert model["accuracy"] == final["accuracy"]  # the server's evaluation of exactly this model
    assert model["architecture"] == "logistic" and "epsilon" not in model  # no differential privacy here
    assert "published the final model" in (tmp_path / "aggregator.log").read_text()

"""Session fixtures for end-to-end tests: a real control plane on 127.0.0.1 plus the node agent, and one
Prometheus beside the API server for the whole session, discovering pods through it.

The binaries are built (or found in the cache) once, right after collection and only if e2e tests were
collected, so a cold build (tens of minutes) never counts against a test's timeout.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_support import REPO, KubeApi, NodeAgent, cluster, wait_for

AGENT = REPO / "e2e" / "nodeagent" / "agent.py"
IMAGE_MAP = REPO / "e2e" / "nodeagent" / "images.yaml"
NODE_NAME = "fedfleet-e2e-node"
# A /24 of its own per session, so a dev cluster's agent (127.0.10.0/24) never holds the same addresses.
POD_CIDR = f"127.0.{random.randrange(100, 200)}.0/24"

_bin_dir: Path | None = None
_prometheus_bin: Path | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _bin_dir, _prometheus_bin
    if any(item.get_closest_marker("e2e") for item in session.items):
        _bin_dir = _bin_dir or cluster.build()
        _prometheus_bin = _prometheus_bin or cluster.build_prometheus()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.ControlPlane]:
    state = tmp_path_factory.mktemp("controlplane")
    cp = cluster.up(state, _bin_dir or cluster.build(), prometheus=True, prometheus_bin=_prometheus_bin)
    try:
        yield cp
    finally:
        cluster.down(state)


@pytest.fixture(scope="session")
def prometheus(control_plane: cluster.ControlPlane) -> str:
    """The URL of the session's Prometheus (started with the control plane, stopped with it)."""
    assert control_plane.prometheus, f"Prometheus did not start; see {control_plane.state_dir}/logs/prometheus.log"
    return control_plane.prometheus


@pytest.fixture(scope="session")
def kube(control_plane: cluster.ControlPlane) -> KubeApi:
    return KubeApi.from_kubeconfig(control_plane.kubeconfig)


def _node_ready(kube: KubeApi, name: str) -> bool:
    node: dict[str, Any] = kube.get(f"/api/v1/nodes/{name}")
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


@pytest.fixture(scope="session")
def node_agent(
    control_plane: cluster.ControlPlane, kube: KubeApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgent]:
    state = tmp_path_factory.mktemp("nodeagent")
    log = state / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(AGENT),
                f"--kubeconfig={control_plane.kubeconfig}",
                f"--image-map={IMAGE_MAP}",
                f"--state-dir={state}",
                f"--node-name={NODE_NAME}",
                f"--pod-cidr={POD_CIDR}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            # The agent must never fall back to an inherited kubeconfig; make sure there is none to find.
            env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
        )
    agent = NodeAgent(NODE_NAME, state, log, proc, POD_CIDR)
    try:
        wait_for(f"node {NODE_NAME} Ready (agent log: {log})", lambda: _node_ready(kube, NODE_NAME))
        yield agent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the operator, installed with its Helm chart -----------------------------------------------------


@pytest.fixture(scope="session")
def operator_release(
    control_plane: cluster.ControlPlane,
    kube: KubeApi,
    node_agent: NodeAgent,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """`helm install` of charts/fedfleet into fedfleet-system, the fleet gateway included; yields once the
    operator pod is Ready (and, by `--wait`, the gateway's)."""
    from operator_support import OPERATOR_NAMESPACE, RELEASE, gateway_values, helm, provide_gateway_volume

    home = tmp_path_factory.mktemp("helm")
    chart = REPO / "charts" / "fedfleet"
    provide_gateway_volume(kube, tmp_path_factory.mktemp("gateway-volume"))
    done = helm(
        control_plane, home, "install", RELEASE, str(chart), f"--namespace={OPERATOR_NAMESPACE}",
        "--create-namespace", "--set", "resyncSeconds=1", "--set", f"prometheus.address={control_plane.prometheus}",
        *gateway_values(POD_CIDR), "--wait", "--timeout=180s",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    def operator_pod() -> dict[str, Any] | None:
        pods = kube.get(
            f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods", labelSelector="app.kubernetes.io/component=operator"
        )["items"]
        ready = [p for p in pods if any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])
        )]  # fmt: skip
        return ready[0] if ready else None

    pod = wait_for("the operator pod Ready", operator_pod, timeout=60)
    try:
        yield {"namespace": OPERATOR_NAMESPACE, "release": RELEASE, "pod": pod, "find_pod": operator_pod}
    finally:
        # Keep the operator's log (the node agent removes a pod's directory with the pod) for post-mortems.
        current = operator_pod() or pod
        logs = node_agent.pod_dir(current["metadata"]["uid"]) / "logs"
        if logs.exists():
            shutil.copytree(logs, home / "operator-logs", dirs_exist_ok=True)
        helm(control_plane, home, "uninstall", RELEASE, f"--namespace={OPERATOR_NAMESPACE}", "--wait")

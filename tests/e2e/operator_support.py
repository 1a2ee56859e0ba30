"""Helpers of the operator's end-to-end tests: our kubectl and helm by path, jobs, their files, the fleet."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from e2e_support import REPO, ApiError, KubeApi, NodeAgent, cluster, wait_for

JSON = dict[str, Any]
GROUP_PATH = "/apis/fedfleet.io/v1alpha1"
OPERATOR_NAMESPACE = "fedfleet-system"
RELEASE = "fedfleet"
EXAMPLE = REPO / "examples" / "federatedjob-cluster.yaml"
FEDFLEET = Path(sys.executable).parent / "fedfleet"


GATEWAY = f"{RELEASE}-gateway"
GATEWAY_GRPC_PORT = 7443
#: The node agent's stand-in for the gateway Service's stable address (nothing resolves Service names here).
PINNED_IP_ANNOTATION = "nodeagent.fedfleet.io/pod-ip"
#: A second fleet the session's gateway serves, for tests that write its view by hand: the `default` fleet's
#: view is the rollout controller's, and a hand-written generation there would make its views look stale.
LAB_FLEET = "lab"


def gateway_ip(pod_cidr: str) -> str:
    """The address the session's gateway pod always gets: the last host of the node agent's pod CIDR."""
    import ipaddress

    return str(list(ipaddress.ip_network(pod_cidr).hosts())[-1])


def gateway_values(pod_cidr: str) -> list[str]:
    """`helm --set` arguments that make the chart's gateway reachable on the local node agent: a pinned pod
    address, which aggregators are told as the gateway's address."""
    ip = gateway_ip(pod_cidr)
    annotation = PINNED_IP_ANNOTATION.replace(".", "\\.")
    return [
        "--set", f"gateway.podAnnotations.{annotation}={ip}",
        "--set", f"gateway.address={ip}:{GATEWAY_GRPC_PORT}",
        "--set", f"gateway.fleets={{default,{LAB_FLEET}}}",
    ]  # fmt: skip


def provide_gateway_volume(kube: KubeApi, directory: Path) -> None:
    """A PersistentVolume bound in advance to the gateway's claim: no storage provisioner runs here, and
    `helm --wait` waits for claims to be bound. (The node agent keeps a claim's files in a directory of its own.)"""
    kube.create(
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{OPERATOR_NAMESPACE}-{GATEWAY}-data"},
            "spec": {
                "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(directory)},
                "claimRef": {"namespace": OPERATOR_NAMESPACE, "name": f"{GATEWAY}-data"},
            },
        },
    )


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without KUBECONFIG: our tools must never fall back to an inherited cluster."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(extra)
    return env


def kubectl(
    cp: cluster.ControlPlane,
    *args: str,
    stdin: str | None = None,
    kubeconfig: Path | None = None,
    with_plugins: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Our own kubectl, by path, with an explicit kubeconfig: never the machine's, never ~/.kube/config.
    `with_plugins` puts the venv's bin first on PATH, where kubectl finds `kubectl-fedfleet`."""
    env = clean_env()
    if with_plugins:
        env["PATH"] = f"{FEDFLEET.parent}{os.pathsep}{env.get('PATH', '')}"
    config = f"--kubeconfig={kubeconfig or cp.kubeconfig}"
    # kubectl takes no flags before a plugin's name: the plugin gets them (and reads --kubeconfig itself).
    argv = [str(cp.binary("kubectl")), *(args[:1] if with_plugins else ()), config, *args[int(with_plugins) :]]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, env=env, check=False)


def helm(cp: cluster.ControlPlane, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(**{f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")})
    argv = [str(cp.binary("helm")), f"--kubeconfig={cp.kubeconfig}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)


def new_namespace(kube: KubeApi, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def example_job(name: str | None = None, **spec: Any) -> JSON:
    job: JSON = yaml.safe_load(EXAMPLE.read_text())
    if name:
        job["metadata"]["name"] = name
    job["spec"].update(spec)
    return job


def apply(cp: cluster.ControlPlane, namespace: str, manifest: JSON) -> subprocess.CompletedProcess[str]:
    return kubectl(cp, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))


def get_job(kube: KubeApi, namespace: str, name: str) -> JSON:
    return kube.get(f"{GROUP_PATH}/namespaces/{namespace}/federatedjobs/{name}")


def condition(job: JSON, kind: str) -> JSON | None:
    return next((c for c in job.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def is_true(job: JSON, kind: str) -> bool:
    found = condition(job, kind)
    return found is not None and found["status"] == "True"


def wait_job(kube: KubeApi, namespace: str, name: str, kind: str, timeout: float = 120.0) -> JSON:
    def check() -> JSON | None:
        job = get_job(kube, namespace, name)
        if is_true(job, "Failed") and kind != "Failed":
            raise AssertionError(f"job failed: {condition(job, 'Failed')}")
        return job if is_true(job, kind) else None

    return wait_for(f"job {namespace}/{name} {kind}", check, timeout=timeout, interval=0.5)


def start_slowed_job(kube: KubeApi, cp: cluster.ControlPlane, namespace: str, name: str, rounds: int) -> str:
    """Apply the example job with slower devices, so a test can act mid-job; returns the endpoint once Ready."""
    manifest = example_job(name, rounds=rounds)
    manifest["spec"]["simulation"]["compute"]["networkSeconds"] = 0.6
    applied = apply(cp, namespace, manifest)
    assert applied.returncode == 0, applied.stderr
    endpoint: str = wait_job(kube, namespace, name, "Ready", timeout=90)["status"]["endpoint"]
    return endpoint


def aggregator_pods(kube: KubeApi, namespace: str, job: str) -> list[JSON]:
    pods: list[JSON] = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"fedfleet.io/job={job}")["items"]
    return [p for p in pods if "deletionTimestamp" not in p["metadata"]]


def running_pod(kube: KubeApi, namespace: str, job: str, timeout: float = 60.0, not_uid: str | None = None) -> JSON:
    def check() -> JSON | None:
        pods = [p for p in aggregator_pods(kube, namespace, job) if p["metadata"]["uid"] != not_uid]
        return next((p for p in pods if p.get("status", {}).get("phase") == "Running"), None)

    return wait_for(f"aggregator pod of {namespace}/{job} Running", check, timeout=timeout, interval=0.1)


def pid_of(agent: NodeAgent, pod: JSON, container: str) -> int:
    return int((agent.pod_dir(pod["metadata"]["uid"]) / "logs" / f"{container}.pid").read_text())


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def gone(kube: KubeApi, path: str) -> bool:
    try:
        kube.get(path)
    except ApiError as err:
        return err.code == 404
    return False


@dataclass(frozen=True)
class JobFiles:
    job: Path
    ca: Path
    token_key: Path


def job_files(kube: KubeApi, namespace: str, name: str, directory: Path) -> JobFiles:
    """What a fleet operator hands devices: the job's manifest, its CA and its token key (from the Secret)."""
    directory.mkdir(parents=True, exist_ok=True)
    secret = kube.get(f"/api/v1/namespaces/{namespace}/secrets/{name}-credentials")
    files = JobFiles(directory / "job.yaml", directory / "ca.crt", directory / "token.key")
    files.ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    files.token_key.write_bytes(base64.b64decode(secret["data"]["token.key"]))
    job = get_job(kube, namespace, name)
    job["metadata"] = {"name": name, "namespace": namespace}
    job.pop("status", None)
    files.job.write_text(json.dumps(job))
    return files


@contextmanager
def fleet(endpoint: str, files: JobFiles, log: Path, devices: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`fedfleet device-sim` against the endpoint from the job's status, as its own process."""
    argv = [
        str(FEDFLEET), "device-sim", "--aggregator", endpoint, "--job", str(files.job),
        "--token-key", str(files.token_key), "--ca", str(files.ca), "--give-up-after", "60", "--workers", "1",
    ]  # fmt: skip
    if devices is not None:
        argv += ["--devices", str(devices)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

"""The environment of the pods fedfleet runs in: the names the operator sets and the programs in the pods read.

The operator writes the aggregator pod's environment (`resources/pod.py`); the aggregator's status reporter
(`aggregator/k8s_status.py`), the pod's init step (`operator/certinit.py`) and the operator itself
(`operator/kube_credentials.py`) read it. Each name is written here once, so the two sides of the process
boundary cannot drift apart.

* `JobEnvironment`: which FederatedJob an aggregator pod serves (FEDFLEET_JOB_NAME / FEDFLEET_JOB_NAMESPACE).
* `POD_IP`: the pod's own address, from the downward API; the init step's arguments refer to it as `$(POD_IP)`.
* `under_root()`: absolute in-pod paths, resolved under $FEDFLEET_ROOT when it is set. The local node agent
  (e2e/nodeagent) runs pods as processes, places every mountPath under the pod's directory and passes that
  directory as FEDFLEET_ROOT (and the pod's address as FEDFLEET_POD_IP); in a real container FEDFLEET_ROOT is
  unset and paths are used as they are.
* `in_cluster_server()`: the API server a pod reaches, from the variables the kubelet sets in every pod.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Set by the operator on the aggregator container: the job whose status the aggregator patches.
JOB_NAME = "FEDFLEET_JOB_NAME"
JOB_NAMESPACE = "FEDFLEET_JOB_NAMESPACE"
#: Set from the downward API (status.podIP) on the aggregator's containers and the operator's own pod.
POD_IP = "POD_IP"
#: Set by the local node agent only: the directory every absolute mountPath of the pod lives under.
ROOT = "FEDFLEET_ROOT"
#: Set by the local node agent only: the pod's address (what POD_IP is in a cluster).
NODE_AGENT_POD_IP = "FEDFLEET_POD_IP"
#: Set by the kubelet in every pod (and by the local node agent): where the API server is.
KUBERNETES_SERVICE_HOST = "KUBERNETES_SERVICE_HOST"
KUBERNETES_SERVICE_PORT = "KUBERNETES_SERVICE_PORT"
#: Mounted by Kubernetes into every pod with a ServiceAccount: `token`, `ca.crt`, `namespace`.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


@dataclass(frozen=True)
class JobEnvironment:
    """Which FederatedJob an aggregator pod serves: the operator sets it, the status reporter reads it."""

    name: str
    namespace: str

    def container_env(self) -> list[dict[str, str]]:
        """The entries of the container's `env` (Kubernetes EnvVar objects)."""
        return [{"name": JOB_NAME, "value": self.name}, {"name": JOB_NAMESPACE, "value": self.namespace}]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> JobEnvironment | None:
        """The job, in a pod the operator made; None elsewhere (a local `fedfleet aggregator`)."""
        env = _environ(environ)
        name, namespace = env.get(JOB_NAME), env.get(JOB_NAMESPACE)
        return cls(name, namespace) if name and namespace else None


def pod_ip_env() -> dict[str, Any]:
    """The container `env` entry that exposes the pod's address as POD_IP (downward API)."""
    return {"name": POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def reference(name: str) -> str:
    """How a container's command or args refer to one of its environment variables (expanded by Kubernetes)."""
    return f"$({name})"


def under_root(path: str | Path, environ: Mapping[str, str] | None = None) -> Path:
    """An absolute in-pod path, under $FEDFLEET_ROOT when it is set; relative paths are left alone."""
    root = _environ(environ).get(ROOT)
    p = Path(path)
    if root and p.is_absolute():
        return Path(root) / p.relative_to("/")
    return p


def in_cluster_server(environ: Mapping[str, str] | None = None) -> str | None:
    """`https://host:port` of the API server as seen from inside a pod; None outside a cluster."""
    env = _environ(environ)
    host, port = env.get(KUBERNETES_SERVICE_HOST), env.get(KUBERNETES_SERVICE_PORT)
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def service_account_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where this pod's ServiceAccount token, CA and namespace are."""
    return under_root(SERVICE_ACCOUNT_DIR, environ)

"""The aggregator Pod: an init step that issues the server certificate, then `fedfleet aggregator`.

* Init container `prepare` (the operator image): signs a server certificate for the pod's own IP and the
  Service names with the job CA, and writes the final aggregator configuration (listening on the pod IP).
  Only this container mounts the CA key.
* Container `aggregator`: serves gRPC (TLS, device tokens) and HTTP (/metrics, /healthz, /readyz), checkpoints
  into the state volume, and reports progress by patching its job's status with its own ServiceAccount. The
  pod carries the `prometheus.io/*` annotations, so Prometheus' pod discovery scrapes its /metrics. When the
  operator knows a fleet gateway, the job's gateway Secret (its CA and publish token) is mounted read-only, and
  the aggregator publishes the final model there when the job completes.

`restartPolicy: OnFailure`: the aggregator exits 0 once the job is complete (the pod then Succeeds); a crash
restarts it in place, and it resumes from its checkpoint. Exit 2 is bad input, which no restart fixes: the
aggregator writes its one-line reason to the container's termination message file, and the operator, which
sees the exit code in the pod's status, fails the job with that reason and deletes the pod
(fedfleet.api.termination): restart rules by exit code are not in every Kubernetes version, so the operator
decides. The configuration path is relative to
`workingDir: /` so the same pod works in a container (cwd /) and on the local node agent (cwd = the pod's
directory, under which it places every mountPath).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fedfleet.api import pod_environment, termination
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.api.pod_environment import JobEnvironment
from fedfleet.operator import naming
from fedfleet.operator.config import OperatorConfig

TERMINATION_GRACE_SECONDS = 30
#: The container that runs `fedfleet aggregator`: the one whose exit code the operator reads.
AGGREGATOR_CONTAINER = "aggregator"


def _resources(spec: FederatedJobSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in ("requests", "limits"):
        values = getattr(spec.aggregator.resources, section).model_dump(exclude_none=True)
        if values:
            out[section] = values
    return out


def service_hosts(job: dict[str, Any]) -> list[str]:
    name, ns = naming.aggregator_name(job["metadata"]["name"]), job["metadata"]["namespace"]
    return [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]


def _volumes(job: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    name = job["metadata"]["name"]
    secret = naming.secret_name(name)
    state: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": naming.claim_name(name)}}
        if config.state_storage == "pvc"
        else {"emptyDir": {}}
    )
    volumes: list[dict[str, Any]] = [
        {
            "name": "ca",
            "secret": {
                "secretName": secret,
                "items": [{"key": key, "path": key} for key in (naming.CA_CERT, naming.CA_KEY)],
                "defaultMode": 0o400,
            },
        },
        {
            "name": "auth",
            "secret": {
                "secretName": secret,
                "items": [{"key": naming.TOKEN_KEY, "path": naming.TOKEN_KEY}],
                "defaultMode": 0o400,
            },
        },
        {"name": "config", "configMap": {"name": naming.aggregator_name(name)}},
        {"name": "run", "emptyDir": {}},
        {"name": "state", **state},
    ]
    if config.gateway is not None:
        gateway = {"secretName": naming.gateway_secret_name(name), "defaultMode": 0o400}
        volumes.append({"name": "gateway", "secret": gateway})
    return volumes


def _pod_spec(job: dict[str, Any], spec: FederatedJobSpec, config: OperatorConfig) -> dict[str, Any]:
    meta = job["metadata"]
    pod_ip = pod_environment.reference(pod_environment.POD_IP)
    hosts = [arg for host in [pod_ip, *service_hosts(job)] for arg in ("--host", host)]
    prepare = {
        "name": "prepare",
        "image": config.operator_image,
        "command": ["python", "-m", "fedfleet.operator.certinit"],
        "args": [
            f"--ca-dir={naming.CA_DIR}",
            f"--template={naming.CONFIG_DIR}/{naming.CONFIG_FILE}",
            f"--out-dir={naming.RUN_DIR}",
            f"--listen-host={pod_ip}",
            *hosts,
        ],
        "env": [pod_environment.pod_ip_env()],
        "volumeMounts": [
            {"name": "ca", "mountPath": naming.CA_DIR, "readOnly": True},
            {"name": "config", "mountPath": naming.CONFIG_DIR, "readOnly": True},
            {"name": "run", "mountPath": naming.RUN_DIR},
        ],
    }
    aggregator: dict[str, Any] = {
        "name": AGGREGATOR_CONTAINER,
        "image": spec.aggregator.image or config.aggregator_image,
        "args": [
            "aggregator",
            "--config",
            f"{naming.RUN_DIR.lstrip('/')}/{naming.CONFIG_FILE}",
            "--termination-message",
            termination.MESSAGE_PATH,
        ],
        "workingDir": "/",
        "terminationMessagePath": termination.MESSAGE_PATH,
        "terminationMessagePolicy": termination.MESSAGE_POLICY,
        "env": [
            pod_environment.pod_ip_env(),
            *JobEnvironment(meta["name"], meta["namespace"]).container_env(),
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "ports": [
            {"name": "grpc", "containerPort": spec.aggregator.port, "protocol": "TCP"},
            {"name": "http", "containerPort": spec.aggregator.http_port, "protocol": "TCP"},
        ],
        # Ready once it serves devices; not ready again when the job is done or it shuts down.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "volumeMounts": [
            {"name": "auth", "mountPath": naming.AUTH_DIR, "readOnly": True},
            {"name": "run", "mountPath": naming.RUN_DIR, "readOnly": True},
            {"name": "state", "mountPath": naming.STATE_DIR},
        ],
    }
    if config.gateway is not None:
        aggregator["volumeMounts"].append({"name": "gateway", "mountPath": naming.GATEWAY_DIR, "readOnly": True})
    resources = _resources(spec)
    if resources:
        aggregator["resources"] = resources
    return {
        "serviceAccountName": naming.aggregator_name(meta["name"]),
        "restartPolicy": "OnFailure",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "enableServiceLinks": False,
        "initContainers": [prepare],
        "containers": [aggregator],
        "volumes": _volumes(job, config),
    }


def scrape_annotations(spec: FederatedJobSpec) -> dict[str, str]:
    """Prometheus' pod discovery scrapes the aggregator's /metrics on its HTTP port (at the pod IP)."""
    return {
        naming.ANNOTATION_SCRAPE: "true",
        naming.ANNOTATION_SCRAPE_PORT: str(spec.aggregator.http_port),
        naming.ANNOTATION_SCRAPE_PATH: naming.METRICS_PATH,
    }


def pod_spec_hash(job: dict[str, Any], spec: FederatedJobSpec, config: OperatorConfig, config_text: str) -> str:
    """Identifies what the pod is built from (its spec and the configuration it reads)."""
    payload = json.dumps([_pod_spec(job, spec, config), config_text], sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def build_aggregator_pod(
    job: dict[str, Any], spec: FederatedJobSpec, config: OperatorConfig, config_text: str
) -> dict[str, Any]:
    meta = naming.child_metadata(job, naming.aggregator_name(job["metadata"]["name"]))
    # The scrape annotations stay out of the hash: a new way of being scraped is no reason to restart training.
    meta["annotations"] = {
        naming.ANNOTATION_POD_HASH: pod_spec_hash(job, spec, config, config_text),
        **scrape_annotations(spec),
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": _pod_spec(job, spec, config)}

"""Names, labels and paths shared by the builders, the reconcile step and the aggregator pod's init step.

Every child's name is derived from the job's name, so a restarted operator finds what it created before
instead of creating a second one, and creation races end in 409 AlreadyExists rather than duplicates.
"""

from __future__ import annotations

from typing import Any

from fedfleet.api.federatedjob import API_GROUP, API_VERSION, KIND

JOB_API_VERSION = f"{API_GROUP}/{API_VERSION}"
MANAGED_BY = "fedfleet-operator"

LABEL_JOB = f"{API_GROUP}/job"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: Hash of everything the aggregator pod is built from: a different hash means the pod must be replaced.
ANNOTATION_POD_HASH = f"{API_GROUP}/pod-spec-hash"
#: The annotations Prometheus' usual pod discovery keeps: scrape this pod, on this port, at this path.
ANNOTATION_SCRAPE = "prometheus.io/scrape"
ANNOTATION_SCRAPE_PORT = "prometheus.io/port"
ANNOTATION_SCRAPE_PATH = "prometheus.io/path"
METRICS_PATH = "/metrics"

# Where things are inside the aggregator pod. Programs resolve these under $FEDFLEET_ROOT when it is set
# (the local node agent runs pods as processes, with each mountPath under the pod's directory; see
# fedfleet.api.pod_environment, which also names the pod's environment variables).
CA_DIR = "/etc/fedfleet/ca"  # the job CA (certificate and key): mounted into the init container only
AUTH_DIR = "/etc/fedfleet/auth"  # the device-token key
CONFIG_DIR = "/etc/fedfleet/config"  # the aggregator configuration template (ConfigMap)
RUN_DIR = "/etc/fedfleet/run"  # written by the init step: server certificate and the final configuration
STATE_DIR = "/var/lib/fedfleet/state"  # checkpoints: a PersistentVolumeClaim, so a new pod resumes
GATEWAY_DIR = "/etc/fedfleet/gateway"  # the fleet gateway's CA and publish token: where the final model goes

CONFIG_FILE = "aggregator.yaml"
CA_CERT, CA_KEY, TOKEN_KEY = "ca.crt", "ca.key", "token.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
#: The key of the gateway's publish token in the job's gateway Secret (never the admin token: see GatewayLink).
GATEWAY_PUBLISH_TOKEN = "publish.token"


def aggregator_name(job: str) -> str:
    """The aggregator's Pod, Service, ServiceAccount, Role, RoleBinding and ConfigMap share this name."""
    return f"{job}-aggregator"


def secret_name(job: str) -> str:
    return f"{job}-credentials"


def gateway_secret_name(job: str) -> str:
    """The job's copy of the fleet gateway's CA and publish token (the aggregator publishes with them).

    Not `<job>-gateway`, the name of the copy that held the admin token: that Secret is immutable, so a job
    from before the publish token would keep it, and its replaced aggregator pod would find no publish token.
    Under a new name the operator creates the copy such a job needs; the old one goes with the job."""
    return f"{job}-gateway-publish"


def claim_name(job: str) -> str:
    return f"{job}-state"


def job_labels(job: str, component: str = "aggregator") -> dict[str, str]:
    return {
        LABEL_NAME: "fedfleet",
        LABEL_INSTANCE: job,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: job,
    }


def selector_labels(job: str) -> dict[str, str]:
    """What the Service selects: stable across pod recreation, unique to this job's aggregator."""
    return {LABEL_JOB: job, LABEL_COMPONENT: "aggregator"}


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """The job as the controlling owner: garbage collection deletes the child when the job goes."""
    meta = job["metadata"]
    return {
        "apiVersion": JOB_API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(job: dict[str, Any], name: str, component: str = "aggregator") -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": job_labels(meta["name"], component),
        "ownerReferences": [owner_reference(job)],
    }

"""What the local cluster's Prometheus is made of: its configuration, its discovery account, its command line.

Pure builders of dicts, strings and argv; ``cluster.py`` applies the account, writes the files and starts the
server. Prometheus finds what to scrape the way it does in a real cluster: its Kubernetes service discovery
(role ``pod``) lists and watches pods through the real API server, as a ServiceAccount of its own that may
do nothing else, and keeps the pods annotated the usual way::

    prometheus.io/scrape: "true"     # required
    prometheus.io/port: "8080"       # the port /metrics is served on (default: each declared container port)
    prometheus.io/path: /metrics     # optional

Every kept target is labelled ``namespace``, ``pod`` and ``component`` (the pod's
``app.kubernetes.io/component`` label). A scraped series that carries a label of the same name keeps it as
``exported_<name>`` (``honor_labels: false``): a pod must not be able to pass its samples off as another
pod's, so the target's identity always wins. fedfleet's per-job metrics therefore show the job's namespace as
``exported_namespace`` (operator) or the job's name as ``exported_job`` (aggregator privacy metrics).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_SCRIPT = REPO / "e2e" / "prometheus" / "build.sh"
#: The project's alerting and recording rules: shipped with the chart, loaded by the local Prometheus.
RULES_FILE = REPO / "charts" / "fedfleet" / "files" / "rules.yaml"

DISCOVERY_NAMESPACE = "fedfleet-monitoring"
DISCOVERY_ACCOUNT = "prometheus"
DISCOVERY_ROLE = "fedfleet-prometheus-discovery"
#: A Secret of type service-account-token: the token controller fills it with a token that does not expire,
#: so a dev cluster's Prometheus keeps discovering after days (a TokenRequest token would need refreshing).
DISCOVERY_TOKEN_SECRET = "prometheus-discovery-token"
SCRAPE_JOB = "kubernetes-pods"

#: Short, so that tests see a new pod's samples within seconds; scrape_timeout may not exceed it.
DEFAULT_INTERVAL_SECONDS = 2.0
#: Bounds on what one target may send: a pod that anyone can annotate must not fill the server.
SAMPLE_LIMIT = 20_000
LABEL_LIMIT = 40
BODY_SIZE_LIMIT = "16MB"
RETENTION = "1d"


def discovery_objects() -> list[JSON]:
    """The discovery account and exactly the rights the pod role needs (list and watch), in creation order."""
    meta = {"namespace": DISCOVERY_NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DISCOVERY_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DISCOVERY_ACCOUNT, **meta}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": DISCOVERY_TOKEN_SECRET,
                "annotations": {"kubernetes.io/service-account.name": DISCOVERY_ACCOUNT},
                **meta,
            },
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": DISCOVERY_ROLE},
            # Read-only, no `get` of single objects and no Secrets: discovery lists and watches, nothing more.
            "rules": [{"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": ["list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": DISCOVERY_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": DISCOVERY_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": DISCOVERY_ACCOUNT, "namespace": DISCOVERY_NAMESPACE}],
        },
    ]


_PLURALS = {
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "Secret": "secrets",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
}


def object_path(obj: JSON) -> str:
    """The API path of one of discovery_objects() (for a server-side apply of it)."""
    group_version = str(obj["apiVersion"])
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    meta = obj["metadata"]
    scope = f"/namespaces/{meta['namespace']}" if "namespace" in meta else ""
    return f"{prefix}{scope}/{_PLURALS[obj['kind']]}/{meta['name']}"


def discovery_kubeconfig(server: str, ca_pem: bytes, token: str) -> str:
    """A kubeconfig that authenticates as the discovery ServiceAccount, for kubernetes_sd_configs."""
    user = f"system:serviceaccount:{DISCOVERY_NAMESPACE}:{DISCOVERY_ACCOUNT}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fedfleet-e2e",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "prometheus", "context": {"cluster": "fedfleet-e2e", "user": user}}],
        "current-context": "prometheus",
    }
    return yaml.safe_dump(config, sort_keys=False)


def _seconds(value: float) -> str:
    if not value > 0:
        raise ValueError(f"interval: must be greater than 0 seconds, got {value}")
    return f"{round(value * 1000)}ms"


def _pod_relabeling() -> list[JSON]:
    annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return [
        {"source_labels": [annotation + "scrape"], "regex": "true", "action": "keep"},
        # Only running pods: a pending pod has no address yet, a finished one (an aggregator whose job is
        # complete) serves nothing; scraping either would only add `up == 0` noise.
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
        {"source_labels": [annotation + "path"], "regex": "(.+)", "target_label": "__metrics_path__"},
        # The annotated port at the pod's IP (status.podIP); IPv6 addresses need brackets.
        {
            "source_labels": [annotation + "port", "__meta_kubernetes_pod_ip"],
            "regex": r"(\d+);(([A-Fa-f0-9]{1,4}::?){1,7}[A-Fa-f0-9]{1,4})",
            "replacement": "[$2]:$1",
            "target_label": "__address__",
        },
        {
            "source_labels": [annotation + "port", "__meta_kubernetes_pod_ip"],
            "regex": r"(\d+);((([0-9]+?)(\.|$)){4})",
            "replacement": "$2:$1",
            "target_label": "__address__",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {
            "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
            "target_label": "component",
        },
    ]


def prometheus_config(
    kubeconfig: Path,
    rule_files: Sequence[Path] = (RULES_FILE,),
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
) -> JSON:
    """prometheus.yml: one scrape job fed by Kubernetes pod discovery through `kubeconfig`, and the rules."""
    interval = _seconds(interval_seconds)
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": SCRAPE_JOB,
                "honor_labels": False,  # the target's namespace/pod win over a scraped series' own labels
                "sample_limit": SAMPLE_LIMIT,
                "label_limit": LABEL_LIMIT,
                "body_size_limit": BODY_SIZE_LIMIT,
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
                "relabel_configs": _pod_relabeling(),
            }
        ],
    }


def prometheus_argv(bin_dir: Path, config_file: Path, data_dir: Path, host: str, port: int) -> list[str]:
    return [
        str(bin_dir / "prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address={host}:{port}",
        "--log.level=info",
    ]

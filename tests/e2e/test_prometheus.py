"""The session's real Prometheus finds fedfleet's pods through Kubernetes service discovery against the real API
server, scrapes them at their pod IPs and answers queries labelled with the pod; it loads fedfleet's rules."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import pytest
from e2e_support import KubeApi, cluster, wait_for
from operator_support import apply, example_job, new_namespace, running_pod, wait_job

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
DISCOVERY_USER = "system:serviceaccount:fedfleet-monitoring:prometheus"


def _api(prometheus: str, path: str, **params: str) -> JSON:
    url = f"{prometheus}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        answer: JSON = json.loads(resp.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def _query(prometheus: str, promql: str) -> list[JSON]:
    data = _api(prometheus, "/api/v1/query", query=promql)
    assert data["resultType"] == "vector", data
    result: list[JSON] = data["result"]
    return result


def _target_up(prometheus: str, pod: JSON) -> JSON | None:
    """The active target of `pod` once its last scrape succeeded."""
    meta = pod["metadata"]
    for target in _api(prometheus, "/api/v1/targets", state="active")["activeTargets"]:
        labels = target["labels"]
        if (labels.get("namespace"), labels.get("pod")) == (meta["namespace"], meta["name"]):
            return target if target["health"] == "up" else None
    return None


def _allowed(kube: KubeApi, verb: str, resource: str) -> bool:
    review = kube.create(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": DISCOVERY_USER,
                "groups": ["system:serviceaccounts", "system:serviceaccounts:fedfleet-monitoring"],
                "resourceAttributes": {"verb": verb, "resource": resource, "group": ""},
            },
        },
    )
    return bool(review["status"]["allowed"])


def test_prometheus_discovers_and_scrapes_the_operator_and_aggregator_pods(
    control_plane: cluster.ControlPlane,
    kube: KubeApi,
    operator_release: dict[str, Any],
    prometheus: str,
) -> None:
    # The chart was told where Prometheus is, and the operator got it.
    operator = operator_release["find_pod"]()
    (container,) = operator["spec"]["containers"]
    assert f"--prometheus-address={prometheus}" in container["args"]

    ns = new_namespace(kube, "e2e-prom")
    try:
        _scraped_and_queried(control_plane, kube, prometheus, operator, ns)
    finally:
        kube.delete(f"/api/v1/namespaces/{ns}")  # its aggregator would keep running through later tests


def _scraped_and_queried(
    control_plane: cluster.ControlPlane, kube: KubeApi, prometheus: str, operator: JSON, ns: str
) -> None:
    job = "watched"  # no devices join: its aggregator waits for them, serving /metrics all along
    applied = apply(control_plane, ns, example_job(job, rounds=50))
    assert applied.returncode == 0, applied.stderr
    wait_job(kube, ns, job, "Ready", timeout=90)
    aggregator = running_pod(kube, ns, job)

    for pod, component, port in ((operator, "operator", 8080), (aggregator, "aggregator", 9090)):
        name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        target = wait_for(f"Prometheus scraping {name}", lambda pod=pod: _target_up(prometheus, pod), timeout=90)
        # Found by the pod role of Kubernetes discovery (the object as the API server has it), scraped at the
        # pod IP the node agent reported, on the annotated port.
        discovered = target["discoveredLabels"]
        assert discovered["__meta_kubernetes_pod_uid"] == pod["metadata"]["uid"], discovered
        assert discovered["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
        assert target["scrapeUrl"] == f"http://{pod['status']['podIP']}:{port}/metrics", target
        assert target["labels"]["component"] == component and target["scrapePool"] == "kubernetes-pods"

    # Samples carry the pod that exported them.
    agg = aggregator["metadata"]["name"]
    samples = wait_for(
        "the aggregator's fedfleet_rounds_target in Prometheus",
        lambda: _query(prometheus, f'fedfleet_rounds_target{{namespace="{ns}", pod="{agg}"}}'),
    )
    (sample,) = samples
    assert float(sample["value"][1]) == 50.0
    assert sample["metric"]["component"] == "aggregator"

    # The operator's per-job series: its own `namespace` label (the job's) is kept as exported_namespace,
    # because the target's namespace (the operator's) wins.
    op = operator["metadata"]
    samples = wait_for(
        "the operator's fedfleet_job_rounds_target in Prometheus",
        lambda: _query(prometheus, f'fedfleet_job_rounds_target{{exported_namespace="{ns}", name="{job}"}}'),
    )
    (sample,) = samples
    assert float(sample["value"][1]) == 50.0
    assert (sample["metric"]["namespace"], sample["metric"]["pod"]) == (op["namespace"], op["name"])

    # The project's rules are loaded and evaluate without errors.
    groups = {g["name"]: g for g in _api(prometheus, "/api/v1/rules")["groups"]}
    assert {"fedfleet-aggregator", "fedfleet-privacy", "fedfleet-targets"} <= set(groups)
    for group in groups.values():
        for rule in group["rules"]:
            assert rule["health"] != "err", rule

    # Discovery runs as its own account, which can list and watch pods and nothing more.
    assert _allowed(kube, "list", "pods") and _allowed(kube, "watch", "pods")
    assert not _allowed(kube, "get", "secrets") and not _allowed(kube, "create", "pods")

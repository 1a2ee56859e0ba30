"""What a GitOps controller and its users do to a FederatedJob, on the real API server: (1) a job with a
140 KB annotation is reconciled and deleted cleanly (kopf's diff base once copied the annotation and pushed
the object past the 256 KiB annotation limit: every patch got 422 and the deletion hung on the finalizer);
(2) the same manifest applied 5 times, as Argo CD or Flux re-apply it, changes nothing: no generation bump,
no child re-made or rewritten, no condition flapping."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
import yaml
from e2e_support import ApiError, KubeApi, cluster, wait_for
from operator_support import (
    GROUP_PATH,
    aggregator_pods,
    apply,
    example_job,
    get_job,
    gone,
    kubectl,
    new_namespace,
    running_pod,
    wait_job,
)

from fedfleet.api.federatedjob import API_GROUP

pytestmark = pytest.mark.e2e

BIG_ANNOTATION = "example.com/release-notes"
BIG_VALUE = "x" * 140_000
DIFFBASE_ANNOTATION = f"{API_GROUP}/last-handled-configuration"
#: Children that a reconciliation must leave alone when nothing changed (their resourceVersion tells).
UNCHANGED_CHILDREN = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps/{job}-aggregator",
    "Service": "/api/v1/namespaces/{ns}/services/{job}-aggregator",
    "Secret": "/api/v1/namespaces/{ns}/secrets/{job}-credentials",
}
APPLIES = 5
#: Between two applies: several of the e2e operator's resyncs (resyncSeconds=1), so a reconciliation that
#: rewrites a child or flips a condition has happened before the next snapshot.
SETTLE_SECONDS = 4.0


def _job_path(ns: str, job: str) -> str:
    return f"{GROUP_PATH}/namespaces/{ns}/federatedjobs/{job}"


def _release_finalizers(kube: KubeApi, ns: str, job: str) -> None:
    """Best effort after a failed test: leave no job stuck on its finalizer behind."""
    with contextlib.suppress(ApiError):
        kube.patch(_job_path(ns, job), {"metadata": {"finalizers": None}}, content_type="application/merge-patch+json")


def test_a_job_with_a_140_kb_annotation_is_reconciled_and_deleted_cleanly(
    control_plane: cluster.ControlPlane, kube: KubeApi, operator_release: dict[str, Any]
) -> None:
    ns = new_namespace(kube, "e2e-big-annotation")
    job = "annotated"
    manifest = example_job(job)
    manifest["metadata"]["annotations"] = {BIG_ANNOTATION: BIG_VALUE}
    # `kubectl create`, not a client-side `apply`: kubectl's own last-applied-configuration annotation would
    # copy the 140 KB as well, and the API server would refuse the manifest before the operator saw it.
    created = kubectl(control_plane, "create", "-n", ns, "-f", "-", stdin=yaml.safe_dump(manifest))
    assert created.returncode == 0, created.stderr
    try:
        running_pod(kube, ns, job)

        def handled() -> dict[str, Any] | None:
            current = get_job(kube, ns, job)
            patched = DIFFBASE_ANNOTATION in current["metadata"].get("annotations", {})
            return current if patched and current.get("status", {}).get("observedGeneration") == 1 else None

        reconciled = wait_for("the job's status and kopf's record of it", handled, timeout=60)
        annotations = reconciled["metadata"]["annotations"]
        assert annotations[BIG_ANNOTATION] == BIG_VALUE  # the user's annotation is untouched
        diffbase = annotations[DIFFBASE_ANNOTATION]
        assert BIG_ANNOTATION not in diffbase and len(diffbase) < 4_000, diffbase[:300]
        assert json.loads(diffbase)["spec"] == reconciled["spec"]  # as stored, defaults included

        deleted = kubectl(control_plane, "delete", "federatedjob", "-n", ns, job, "--wait=false")
        assert deleted.returncode == 0, deleted.stderr
        # The finalizer is removed by the operator's patch: the one that failed with 422 before.
        wait_for("the job gone (its finalizer removed)", lambda: gone(kube, _job_path(ns, job)), timeout=60)
    finally:
        if not gone(kube, _job_path(ns, job)):
            _release_finalizers(kube, ns, job)


def _snapshot(kube: KubeApi, ns: str, job: str) -> dict[str, Any]:
    """What a re-apply must not change: the job's generation, the aggregator pod (by uid), the children's
    resourceVersions and each condition's lastTransitionTime."""
    current = get_job(kube, ns, job)
    return {
        "generation": current["metadata"]["generation"],
        "pods": [pod["metadata"]["uid"] for pod in aggregator_pods(kube, ns, job)],
        "children": {
            kind: kube.get(path.format(ns=ns, job=job))["metadata"]["resourceVersion"]
            for kind, path in UNCHANGED_CHILDREN.items()
        },
        "conditions": {c["type"]: c["lastTransitionTime"] for c in current.get("status", {}).get("conditions", [])},
    }


def test_applying_the_example_job_five_times_changes_nothing(
    control_plane: cluster.ControlPlane, kube: KubeApi, operator_release: dict[str, Any]
) -> None:
    ns = new_namespace(kube, "e2e-gitops")
    manifest = example_job()
    job = manifest["metadata"]["name"]
    first = apply(control_plane, ns, manifest)
    assert first.returncode == 0, first.stderr
    try:
        wait_job(kube, ns, job, "Ready", timeout=90)
        for name, path in UNCHANGED_CHILDREN.items():
            wait_for(f"the {name}", lambda p=path: not gone(kube, p.format(ns=ns, job=job)), timeout=30)  # type: ignore[misc]
        second = apply(control_plane, ns, manifest)
        assert second.returncode == 0, second.stderr
        time.sleep(SETTLE_SECONDS)
        before = _snapshot(kube, ns, job)
        assert before["generation"] == 1 and len(before["pods"]) == 1, before
        assert before["conditions"], "the job has no conditions to compare"
        for attempt in range(3, APPLIES + 1):
            again = apply(control_plane, ns, manifest)
            assert again.returncode == 0, again.stderr
            assert "unchanged" in again.stdout, f"apply {attempt}: {again.stdout}"
            time.sleep(SETTLE_SECONDS)
            after = _snapshot(kube, ns, job)
            assert after == before, f"apply {attempt} changed the job or its children: {before} -> {after}"
    finally:
        deleted = kubectl(control_plane, "delete", "federatedjob", "-n", ns, job, "--wait=true", "--timeout=60s")
    assert deleted.returncode == 0, deleted.stderr

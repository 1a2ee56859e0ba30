"""What a new user's mistakes and a cluster's refusals look like on a real API server (issue 12, defects 1 and 7):
a long name runs, a name no Service may have is refused at `kubectl apply` naming the rule, a child the API
server forbids shows on the job as Stalled with the API's message and a Warning Event, and a completed job's
status keeps no stale `Running` pod or endpoint."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from e2e_support import KubeApi, cluster, wait_for
from operator_support import (
    apply,
    condition,
    example_job,
    fleet,
    get_job,
    job_files,
    kubectl,
    new_namespace,
    wait_job,
)

from fedfleet.api.manifest import ManifestError, job_from_object
from fedfleet.api.rules import MAX_NAME_LENGTH, NAME_RULES, Rule

pytestmark = pytest.mark.e2e

#: 50 characters: before, any name over ~40 made the job CA's common name exceed X.509's 64 and nothing ran.
LONG_NAME = ("a-name-of-fifty-characters-that-still-runs-" + "x" * 50)[:50]


def _stalled(kube: KubeApi, namespace: str, name: str) -> dict[str, Any] | None:
    job = get_job(kube, namespace, name)
    found = condition(job, "Stalled")
    return job if found is not None and found["status"] == "True" else None


def _warnings(kube: KubeApi, namespace: str, name: str) -> list[tuple[str, str]]:
    items = kube.get(f"/api/v1/namespaces/{namespace}/events", fieldSelector=f"involvedObject.name={name}")["items"]
    return [(e["reason"], e["message"]) for e in items if e["type"] == "Warning"]


@pytest.fixture(scope="module")
def completed_long_job(
    control_plane: cluster.ControlPlane,
    kube: KubeApi,
    operator_release: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The example job under a 50-character name, run to completion by a simulated fleet: (namespace, the job
    as it was when Complete turned True)."""
    assert len(LONG_NAME) == 50
    ns = new_namespace(kube, "e2e-longname")
    applied = apply(control_plane, ns, example_job(LONG_NAME))
    assert applied.returncode == 0, applied.stderr
    endpoint = wait_job(kube, ns, LONG_NAME, "Ready", timeout=90)["status"]["endpoint"]
    work = tmp_path_factory.mktemp("longname")
    with fleet(endpoint, job_files(kube, ns, LONG_NAME, work / "device"), work / "fleet.log") as devices:
        done = wait_job(kube, ns, LONG_NAME, "Complete", timeout=180)
        assert devices.wait(timeout=60) == 0, (work / "fleet.log").read_text()[-2000:]
    yield ns, done


def test_a_fifty_character_name_runs_to_completion(kube: KubeApi, completed_long_job: tuple[str, Any]) -> None:
    ns, done = completed_long_job
    assert done["status"]["round"] == 3 and done["status"]["phase"] == "Complete"
    secret = kube.get(f"/api/v1/namespaces/{ns}/secrets/{LONG_NAME}-credentials")
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    (cn,) = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert isinstance(cn.value, str) and len(cn.value.encode()) <= 64
    assert cn.value.startswith(f"fedfleet job {ns}/")  # cut and hashed, still telling whose CA it is


def test_a_completed_job_keeps_no_stale_running_pod_or_endpoint(
    kube: KubeApi, completed_long_job: tuple[str, Any]
) -> None:
    ns, done = completed_long_job
    assert "endpoint" not in done["status"], done["status"]  # cleared with the same patch that said Complete

    def settled() -> dict[str, Any] | None:
        status: dict[str, Any] = get_job(kube, ns, LONG_NAME)["status"]
        pod = status.get("aggregatorPod")
        return status if pod is None or pod.get("phase") in ("Succeeded", "Failed") else None

    # The aggregator lingers a little to tell late devices the job is done, then exits 0.
    status = wait_for("the aggregator pod's record to leave Running", settled, timeout=90)
    assert "endpoint" not in status
    assert condition({"status": status}, "Complete") is not None


@pytest.mark.parametrize(
    ("name", "rule"),
    [("my.job", NAME_RULES[0]), ("z" * (MAX_NAME_LENGTH + 1), NAME_RULES[1])],
    ids=["dotted", "too-long-for-its-children"],
)
def test_a_name_no_child_may_have_is_refused_at_apply_naming_the_rule(
    control_plane: cluster.ControlPlane, kube: KubeApi, operator_release: dict[str, Any], name: str, rule: Rule[str]
) -> None:
    ns = new_namespace(kube, "e2e-badname")
    manifest = example_job(name)
    # `fedfleet run` refuses it for the same rule.
    with pytest.raises(ManifestError, match=re.escape(f"metadata.name: {rule.message.partition(' ({')[0]}")):
        job_from_object(manifest)
    done = apply(control_plane, ns, manifest)
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert "metadata.name: Invalid value" in done.stderr, done.stderr
    assert f"metadata.name: {rule.static_message}" in done.stderr, done.stderr
    listed = kubectl(control_plane, "get", "federatedjobs", "-n", ns, "-o", "name")
    assert listed.stdout.strip() == "", listed.stdout  # nothing was stored, so nothing was half-made


def test_a_pod_the_api_server_forbids_stalls_the_job_with_its_message_until_allowed(
    control_plane: cluster.ControlPlane, kube: KubeApi, operator_release: dict[str, Any], tmp_path: Path
) -> None:
    # A quota of zero pods: the API server answers 403 to the aggregator pod, as it does for PodSecurity.
    ns = new_namespace(kube, "e2e-forbidden")
    quota = f"/api/v1/namespaces/{ns}/resourcequotas"
    kube.create(quota, {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
                        "spec": {"hard": {"pods": "0"}}})  # fmt: skip
    wait_for("the quota to be counted", lambda: kube.get(f"{quota}/no-pods").get("status", {}).get("hard"), timeout=30)
    name = "forbidden"
    applied = apply(control_plane, ns, example_job(name))
    assert applied.returncode == 0, applied.stderr
    try:
        job = wait_for("the job to say it is stalled", lambda: _stalled(kube, ns, name), timeout=60)
        stalled = condition(job, "Stalled")
        assert stalled is not None and stalled["reason"] == "ChildForbidden", stalled
        assert stalled["message"].startswith(f"creating Pod {name}-aggregator: the API server answered 403: ")
        assert "exceeded quota" in stalled["message"], stalled
        assert not any(c["status"] == "True" for c in job["status"]["conditions"] if c["type"] == "Failed")
        warnings = wait_for("its Warning Event", lambda: _warnings(kube, ns, name), timeout=30)
        assert ("ChildForbidden", stalled["message"]) in warnings, warnings
        assert kube.get(f"/api/v1/namespaces/{ns}/services/{name}-aggregator")  # the children before the pod
        # Allowed again: the operator retries on its own, and the job is no longer stalled.
        kube.delete(f"{quota}/no-pods")

        def unstalled() -> bool:
            found = condition(get_job(kube, ns, name), "Stalled")
            return found is not None and found["status"] == "False"

        wait_for("the job to be no longer stalled", unstalled, timeout=90)
        assert kube.get(f"/api/v1/namespaces/{ns}/pods/{name}-aggregator")
    finally:
        # An idle aggregator is not free: do not leave it running until its deadline.
        kubectl(control_plane, "delete", "federatedjob", name, "-n", ns, "--wait=false")

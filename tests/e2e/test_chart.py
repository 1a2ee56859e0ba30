"""The Helm chart against the real API server: its Kubernetes version check sees the cluster's own version, Helm
refuses bad values at install naming them, and the pods it makes are admitted by PodSecurity at "restricted".

Server-side dry runs only: nothing here installs a second operator beside the session's."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import REPO, ApiError, KubeApi, cluster
from operator_support import helm

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "fedfleet"
MINIMUM = '{{- define "fedfleet.minKubeVersion" -}}1.30.0-0{{- end -}}'


def _release() -> str:
    return f"chartcheck-{uuid.uuid4().hex[:6]}"


def test_install_judges_the_clusters_own_version(control_plane: cluster.ControlPlane, tmp_path: Path) -> None:
    # Capabilities come from the API server here (v1.37.2, above the minimum): the render passes.
    done = helm(control_plane, tmp_path, "install", _release(), str(CHART), "--namespace=default", "--dry-run=server")
    assert done.returncode == 0, done.stderr
    # The same chart with a minimum above this cluster is refused: the check sees the real cluster's version...
    chart = tmp_path / "fedfleet"
    shutil.copytree(CHART, chart)
    check = chart / "templates" / "kube-version.yaml"
    text = check.read_text(encoding="utf-8")
    assert MINIMUM in text, "the minimum moved; update this test"
    check.write_text(text.replace(MINIMUM, MINIMUM.replace("1.30.0-0", "99.0.0-0")), encoding="utf-8")
    refused = helm(
        control_plane, tmp_path, "install", _release(), str(chart), "--namespace=default", "--dry-run=server"
    )
    assert refused.returncode != 0
    assert "fedfleet needs Kubernetes 99.0.0 or newer; this cluster runs v1.37.2" in refused.stderr, refused.stderr
    # ...while `helm template` has no cluster to judge, and renders.
    rendered = helm(control_plane, tmp_path, "template", "fedfleet", str(chart))
    assert rendered.returncode == 0, rendered.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("resyncSeconds=fast", "at '/resyncSeconds': got string, want number"),
        ("gatway.enabled=true", "additional properties 'gatway' not allowed"),
    ],
)
def test_install_refuses_bad_values_naming_them(
    control_plane: cluster.ControlPlane, tmp_path: Path, value: str, message: str
) -> None:
    done = helm(
        control_plane, tmp_path, "install", _release(), str(CHART), "--namespace=default", "--dry-run=server",
        "--set", value,
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def _restricted_namespace(kube: KubeApi) -> str:
    name = f"restricted-{uuid.uuid4().hex[:6]}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    kube.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )
    return name


def _pods(control_plane: cluster.ControlPlane, home: Path, namespace: str, *values: str) -> list[dict[str, Any]]:
    """The chart's pods as its Deployments would make them in `namespace`."""
    sets = [arg for value in values for arg in ("--set", value)]
    done = helm(control_plane, home, "template", "fedfleet", str(CHART), f"--namespace={namespace}", *sets)
    assert done.returncode == 0, done.stderr
    deployments = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"fedfleet", "fedfleet-gateway"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": d["metadata"]["name"], "namespace": namespace, **d["spec"]["template"]["metadata"]},
            "spec": d["spec"]["template"]["spec"],
        }
        for d in deployments
    ]


def test_the_charts_pods_are_admitted_in_a_restricted_namespace(
    control_plane: cluster.ControlPlane, kube: KubeApi, tmp_path: Path
) -> None:
    namespace = _restricted_namespace(kube)
    try:
        # The ServiceAccount admission plugin refuses a pod whose account is missing, dry run or not.
        for account in ("fedfleet", "fedfleet-gateway"):
            kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": account}})
        for pod in _pods(control_plane, tmp_path, namespace):
            # A dry run goes through admission, PodSecurity included, and stores nothing.
            kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod, params={"dryRun": "All"})
        # Without the chart's security contexts the same pods are refused: the admission really judges them.
        bare = _pods(
            control_plane, tmp_path, namespace, "podSecurityContext=null", "containerSecurityContext=null",
            "gateway.podSecurityContext=null", "gateway.containerSecurityContext=null",
        )  # fmt: skip
        for pod in bare:
            with pytest.raises(ApiError) as refused:
                kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod, params={"dryRun": "All"})
            assert refused.value.code == 403 and 'violates PodSecurity "restricted:latest"' in refused.value.message
    finally:
        kube.delete(f"/api/v1/namespaces/{namespace}")

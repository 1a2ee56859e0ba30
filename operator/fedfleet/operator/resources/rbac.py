"""The aggregator's identity: a ServiceAccount that may read and patch the status of its own job, nothing else.

`resourceNames` pins the Role to this one job; the operator can grant it because it holds get/patch on
federatedjobs/status itself (RBAC refuses to create a Role granting more than its creator has).
"""

from __future__ import annotations

from typing import Any

from fedfleet.api.federatedjob import API_GROUP
from fedfleet.operator import naming


def build_service_account(job: dict[str, Any]) -> dict[str, Any]:
    name = naming.aggregator_name(job["metadata"]["name"])
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": naming.child_metadata(job, name),
        # The aggregator uses its token for one thing (status patches); the pod mounts it explicitly.
        "automountServiceAccountToken": True,
    }


def aggregator_rules(job_name: str) -> list[dict[str, Any]]:
    return [
        {
            "apiGroups": [API_GROUP],
            "resources": ["federatedjobs/status"],
            "resourceNames": [job_name],
            "verbs": ["get", "patch"],
        }
    ]


def build_role(job: dict[str, Any]) -> dict[str, Any]:
    name = job["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": naming.child_metadata(job, naming.aggregator_name(name)),
        "rules": aggregator_rules(name),
    }


def build_rolebinding(job: dict[str, Any]) -> dict[str, Any]:
    name = job["metadata"]["name"]
    account = naming.aggregator_name(name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": naming.child_metadata(job, account),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": job["metadata"]["namespace"]}],
    }

"""What the API server refuses, and who may do what: (2) invalid manifests are rejected by `kubectl apply`
with a message naming the field; (5) the operator is not cluster-admin, and an aggregator's ServiceAccount
can touch its own job's status and nothing else."""

from __future__ import annotations

import copy
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
from e2e_support import KubeApi, cluster, wait_for
from operator_support import (
    GROUP_PATH,
    OPERATOR_NAMESPACE,
    RELEASE,
    apply,
    example_job,
    get_job,
    kubectl,
    new_namespace,
)
from pydantic import ValidationError

from fedfleet.api.federatedjob import FederatedJobSpec, SpecError
from fedfleet.api.rules import CROSS_FIELD_RULES, Rule

pytestmark = pytest.mark.e2e

# Per rule of the table (by name), changes to the example job that break that rule: the API server must
# refuse the manifest naming the rule's field, and the models must refuse it for the same rule.
_SECAGG = {"secureAggregation": {"enabled": True}}
_CENTRAL = {"differentialPrivacy": {"mode": "central", "noiseMultiplier": 1.0}}
_FULL_COHORT = {"clientsPerRound": 5, "minReports": 5}
CEL_CASES: dict[str, dict[str, Any]] = {
    "ports-differ": {"aggregator": {"port": 7000, "httpPort": 7000}},
    "min-reports-within-cohort": {"cohort": {"clientsPerRound": 4, "minReports": 5}},
    "cohort-within-fleet": {"cohort": {"clientsPerRound": 7, "minReports": 3}},
    "federated-evaluation-within-fleet": {"evaluation": {"federatedEvery": 2, "federatedClients": 7}},
    "test-split-within-dataset": {"simulation": {"testSamples": 1797}},  # the example's dataset is digits
    "krum-has-enough-reports": {"aggregation": {"strategy": "krum", "byzantineCount": 1}},
    "multi-krum-selects-from-reports": {
        "aggregation": {"strategy": "multiKrum", "multiKrumSelect": 6},
        "cohort": _FULL_COHORT,
    },
    "secure-aggregation-needs-a-sum-strategy": {"aggregation": {"strategy": "median"}, "privacy": _SECAGG},
    "distributed-noise-needs-secure-aggregation": {
        "privacy": {"differentialPrivacy": {"mode": "distributed", "noiseMultiplier": 1.0}}
    },
    "differential-privacy-needs-a-sum-strategy": {
        "aggregation": {"strategy": "krum"},
        "cohort": _FULL_COHORT,
        "privacy": _CENTRAL,
    },
    "secure-aggregation-needs-two-reports": {"cohort": {"clientsPerRound": 3, "minReports": 1}, "privacy": _SECAGG},
    "differential-privacy-needs-a-noise-level": {"privacy": {"differentialPrivacy": {"mode": "central"}}},
    "distributed-noise-has-a-fixed-clip-norm": {
        "privacy": {
            **_SECAGG,
            "differentialPrivacy": {"mode": "distributed", "noiseMultiplier": 1.0, "adaptiveClipping": True},
        }
    },
}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _manifest(name: str, changes: dict[str, Any]) -> dict[str, Any]:
    job = example_job(name)
    job["spec"] = _merge(job["spec"], changes)
    return job


@pytest.fixture(scope="module")
def rules_namespace(kube: KubeApi, operator_release: dict[str, Any]) -> str:
    return new_namespace(kube, "e2e-rules")


@pytest.mark.parametrize("rule", CROSS_FIELD_RULES, ids=[rule.name for rule in CROSS_FIELD_RULES])
def test_each_cel_rule_rejects_with_the_field_named(
    control_plane: cluster.ControlPlane, rules_namespace: str, rule: Rule
) -> None:
    assert rule.name in CEL_CASES, f"no manifest breaks rule {rule.name}: add one to CEL_CASES"
    manifest = _manifest("cel-case", CEL_CASES[rule.name])
    # The models refuse it for the same rule: `fedfleet run` and the cluster agree on what a valid job is.
    with pytest.raises(ValidationError) as caught:
        FederatedJobSpec.model_validate(manifest["spec"])
    error = caught.value.errors()[0]["ctx"]["error"]
    assert isinstance(error, SpecError) and error.field == rule.field
    assert error.rule.startswith(rule.message.partition(" ({")[0]), error.rule  # the words before any value
    done = apply(control_plane, rules_namespace, manifest)
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert f"spec.{rule.field}: Invalid value" in done.stderr, done.stderr
    assert f"{rule.field}: {rule.static_message}" in done.stderr, done.stderr  # this rule, not another one


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"rounds": -1}, "spec.rounds: Invalid value: -1: spec.rounds in body should be greater than or equal to 1"),
        ({"simulation": {"devices": -3}}, "spec.simulation.devices: Invalid value: -3"),
        ({"aggregation": {"strategy": "fedsgd"}}, 'spec.aggregation.strategy: Unsupported value: "fedsgd"'),
        ({"cohort": {"clientsPerRoud": 3}}, 'unknown field "spec.cohort.clientsPerRoud"'),
        ({"aggregator": {"resources": {"limits": {"cpu": "lots"}}}}, "spec.aggregator.resources.limits.cpu"),
    ],
    ids=["negative-rounds", "negative-devices", "unknown-strategy", "unknown-field", "bad-quantity"],
)
def test_schema_rejects_bad_values_with_the_field_named(
    control_plane: cluster.ControlPlane, rules_namespace: str, changes: dict[str, Any], expected: str
) -> None:
    done = apply(control_plane, rules_namespace, _manifest("schema-case", changes))
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert expected in done.stderr, done.stderr


def test_immutable_fields_cannot_change_but_operational_ones_can(
    control_plane: cluster.ControlPlane, kube: KubeApi, rules_namespace: str
) -> None:
    name = "immutable"
    created = apply(control_plane, rules_namespace, _manifest(name, {"suspend": True}))
    assert created.returncode == 0, created.stderr
    forbidden: list[tuple[str, dict[str, Any]]] = [
        ("seed", {"seed": 12}),
        ("rounds", {"rounds": 4}),
        ("model", {"model": {"architecture": "2nn"}}),
        ("cohort", {"cohort": {"clientsPerRound": 5}}),
        ("privacy", {"privacy": {"deviceEpsilonBudget": 5.0}}),
    ]
    for field, changes in forbidden:
        done = apply(control_plane, rules_namespace, _manifest(name, {"suspend": True, **changes}))
        assert done.returncode != 0, f"{field} changed: {done.stdout}"
        assert f"spec.{field}: Invalid value" in done.stderr and f"{field} is immutable" in done.stderr, done.stderr
    # Allowed changes are applied: the deadline, and resuming (which starts the aggregator).
    allowed = apply(control_plane, rules_namespace, _manifest(name, {"suspend": True, "activeDeadlineSeconds": 600}))
    assert allowed.returncode == 0, allowed.stderr
    job = get_job(kube, rules_namespace, name)
    assert job["spec"]["activeDeadlineSeconds"] == 600 and job["metadata"]["generation"] == 2
    wait_for(
        "the operator to observe generation 2",
        lambda: get_job(kube, rules_namespace, name).get("status", {}).get("observedGeneration") == 2,
        timeout=30,
    )
    assert get_job(kube, rules_namespace, name)["status"]["phase"] == "Suspended"


# --- RBAC -----------------------------------------------------------------------------------------------


def _can(cp: cluster.ControlPlane, who: str, *args: str) -> bool:
    done = kubectl(cp, "auth", "can-i", *args, f"--as={who}")
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), done.stdout + done.stderr
    return answer == "yes"


def test_operator_service_account_is_limited_to_what_it_needs(
    control_plane: cluster.ControlPlane, operator_release: dict[str, Any]
) -> None:
    who = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"
    for allowed in (
        ("watch", "federatedjobs.fedfleet.io", "--all-namespaces"),
        ("patch", "federatedjobs.fedfleet.io", "--subresource=status", "-n", "anywhere"),
        ("create", "pods", "-n", "anywhere"),
        ("delete", "pods", "-n", "anywhere"),
        ("create", "roles.rbac.authorization.k8s.io", "-n", "anywhere"),
        ("create", "events", "-n", "anywhere"),
    ):
        assert _can(control_plane, who, *allowed), allowed
    for denied in (
        ("*", "*", "--all-namespaces"),  # not cluster-admin
        ("create", "clusterrolebindings"),
        ("create", "clusterroles"),
        ("escalate", "roles.rbac.authorization.k8s.io", "-n", "anywhere"),
        ("bind", "clusterroles"),
        ("list", "secrets", "--all-namespaces"),
        ("delete", "secrets", "-n", "anywhere"),
        ("delete", "namespaces"),
        ("create", "deployments.apps", "-n", "anywhere"),
        ("update", "nodes"),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
        ("impersonate", "serviceaccounts", "-n", "anywhere"),
    ):
        assert not _can(control_plane, who, *denied), denied


def _patch_status(cp: cluster.ControlPlane, token: str, path: str, body: dict[str, Any], subresource: bool) -> int:
    url = cp.server + path + ("/status" if subresource else "")
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
    )
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(cp.ca_file)), timeout=10):
            return 200
    except urllib.error.HTTPError as err:
        return err.code


def test_aggregator_service_account_touches_only_its_own_jobs_status(
    control_plane: cluster.ControlPlane, kube: KubeApi, operator_release: dict[str, Any]
) -> None:
    ns = new_namespace(kube, "e2e-rbac")
    for name in ("mine", "theirs"):
        assert apply(control_plane, ns, _manifest(name, {"suspend": True})).returncode == 0
    wait_for(
        "the aggregator's Role and RoleBinding",
        lambda: all(
            kubectl(control_plane, "get", kind, "-n", ns, "mine-aggregator").returncode == 0
            for kind in ("role", "rolebinding", "serviceaccount")
        ),
        timeout=30,
    )
    who = f"system:serviceaccount:{ns}:mine-aggregator"
    assert _can(control_plane, who, "patch", "federatedjobs.fedfleet.io/mine", "--subresource=status", "-n", ns)
    assert not _can(control_plane, who, "patch", "federatedjobs.fedfleet.io/theirs", "--subresource=status", "-n", ns)
    assert not _can(control_plane, who, "patch", "federatedjobs.fedfleet.io/mine", "-n", ns)  # not the spec
    assert not _can(control_plane, who, "list", "federatedjobs.fedfleet.io", "-n", ns)
    assert not _can(control_plane, who, "get", "secrets", "-n", ns)
    assert not _can(control_plane, who, "get", "pods", "-n", ns)

    # And for real, with a token of that ServiceAccount, as the aggregator holds it.
    token = kubectl(control_plane, "create", "token", "mine-aggregator", "-n", ns).stdout.strip()
    assert token
    base = f"{GROUP_PATH}/namespaces/{ns}/federatedjobs"
    assert _patch_status(control_plane, token, f"{base}/mine", {"status": {"round": 0}}, subresource=True) == 200
    assert _patch_status(control_plane, token, f"{base}/theirs", {"status": {"round": 9}}, subresource=True) == 403
    assert _patch_status(control_plane, token, f"{base}/mine", {"spec": {"suspend": False}}, subresource=False) == 403
    assert get_job(kube, ns, "theirs").get("status", {}).get("round") is None
    assert get_job(kube, ns, "mine")["spec"]["suspend"] is True

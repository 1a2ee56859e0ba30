"""The Helm chart: its CRD is the generated one, and its ClusterRole is exactly what the operator needs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fedfleet.operator.k8s import KINDS
from fedfleet.operator.resources.rbac import aggregator_rules

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "fedfleet"


def _template(name: str) -> dict[str, Any]:
    # The RBAC templates use Helm only for names and labels: blank those out and read the YAML.
    text = (CHART / "templates" / name).read_text()
    text = re.sub(r"^\s*\{\{-? include \"fedfleet.labels\" .*\}\}\n", "", text, flags=re.M)
    text = re.sub(r"\{\{[^}]*\}\}", "x", text)
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] and "resourceNames" not in r
        for r in rules
    )


def test_chart_crd_is_the_generated_crd() -> None:
    chart_crd = (CHART / "crds" / "federatedjob.yaml").read_text(encoding="utf-8")
    assert chart_crd == (REPO / "crds" / "federatedjob.yaml").read_text(encoding="utf-8"), (
        "charts/fedfleet/crds/federatedjob.yaml is stale: run make chart-crds"
    )


def test_operator_role_is_limited_and_has_no_wildcards() -> None:
    role = _template("clusterrole.yaml")
    assert role["kind"] == "ClusterRole"
    rules = role["rules"]
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    resources = {res for r in rules for res in r["resources"]}
    assert not {"clusterroles", "clusterrolebindings", "nodes", "customresourcedefinitions/status"} & resources
    # Read-only where it only needs to read.
    assert not _allowed(rules, "apiextensions.k8s.io", "customresourcedefinitions", "create")
    assert not _allowed(rules, "", "secrets", "list")  # it reads its jobs' Secrets by name only


def test_operator_can_create_every_child_it_builds() -> None:
    rules = _template("clusterrole.yaml")["rules"]
    for kind, (prefix, plural) in KINDS.items():
        group = "" if prefix == "/api/v1" else prefix.split("/")[2]
        assert _allowed(rules, group, plural, "create"), kind
        assert _allowed(rules, group, plural, "get"), kind
    assert _allowed(rules, "", "pods", "delete") and _allowed(rules, "", "pods", "watch")
    assert _allowed(rules, "", "events", "create")
    assert _allowed(rules, "fedfleet.io", "federatedjobs", "watch")


def test_roles_it_grants_are_a_subset_of_its_own() -> None:
    # RBAC refuses to let the operator create a Role with permissions it does not hold itself.
    rules = _template("clusterrole.yaml")["rules"]
    for granted in aggregator_rules("any-job"):
        for group in granted["apiGroups"]:
            for resource in granted["resources"]:
                for verb in granted["verbs"]:
                    assert _allowed(rules, group, resource, verb), (group, resource, verb)


def test_binding_targets_the_charts_service_account() -> None:
    binding = _template("clusterrolebinding.yaml")
    account = _template("serviceaccount.yaml")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount" and account["kind"] == "ServiceAccount"

"""What the API server refuses in a ModelRollout: every cross-field rule (CEL) and the schema's bounds are
enforced at `kubectl apply` with a message naming the field, and the models (`fedfleet rollout`, the
controller) refuse the same manifest for the same rule."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from e2e_support import KubeApi, cluster
from operator_support import apply, kubectl, new_namespace
from pydantic import ValidationError
from rollout_e2e_support import accuracy_metric, rollout_manifest

from fedfleet.api.federatedjob import SpecError
from fedfleet.api.modelrollout import ModelRolloutSpec
from fedfleet.api.rollout_rules import ROLLOUT_RULES
from fedfleet.api.rules import Rule

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
_ARTIFACT = "sha256:" + "0" * 64


def _valid(name: str) -> JSON:
    steps: list[JSON] = [{"setWeight": 10}, {"analysis": {"metrics": ["accuracy"]}}, {"setWeight": 100}]
    return rollout_manifest(name, {"artifact": _ARTIFACT}, steps, [accuracy_metric("result >= 0.5")])


def _metric(spec: JSON) -> JSON:
    metric: JSON = spec["analysis"]["metrics"][0]
    return metric


# Per rule of the table (by name), a change to a valid rollout that breaks that rule and no other.
CEL_CASES: dict[str, Callable[[JSON], None]] = {
    "one-model-source": lambda s: s["model"].update(federatedJob="digits"),
    "at-least-one-step": lambda s: s.update(steps=[]),
    "one-action-per-step": lambda s: s["steps"][0].update(pause={"duration": "1m"}),
    "weights-never-decrease": lambda s: s["steps"].append({"setWeight": 50}),
    "metric-has-one-provider": lambda s: _metric(s)["provider"].update(builtin={"metric": "accuracy"}),
    "metric-has-a-condition": lambda s: _metric(s).pop("successCondition"),
    "metric-names-unique": lambda s: s["analysis"]["metrics"].append(copy.deepcopy(_metric(s))),
    "analysis-steps-name-metrics": lambda s: s["steps"][1]["analysis"].update(metrics=["latency"]),
    "background-names-metrics": lambda s: s["analysis"].update(background=["latency"]),
    "control-baseline-needs-control-cohort": lambda s: _metric(s).update(baseline="control"),
    "selector-values-fit-operator": lambda s: s.update(
        selector={"matchExpressions": [{"key": "region", "operator": "In", "values": []}]}
    ),
}


@pytest.fixture(scope="module")
def rules_namespace(kube: KubeApi, operator_release: dict[str, Any]) -> str:
    return new_namespace(kube, "e2e-rollout-rules")


def test_the_valid_rollout_is_accepted(control_plane: cluster.ControlPlane, rules_namespace: str) -> None:
    """The cases below break a manifest the API server accepts: each refusal is that case's doing."""
    manifest = _valid("valid-case")
    ModelRolloutSpec.model_validate(manifest["spec"])
    # A server-side dry run: admitted (schema and CEL) but not stored, so no controller acts on it.
    done = kubectl(control_plane, "apply", "--dry-run=server", "-n", rules_namespace, "-f", "-",
                   stdin=yaml.safe_dump(manifest))  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("rule", ROLLOUT_RULES, ids=[rule.name for rule in ROLLOUT_RULES])
def test_each_cel_rule_rejects_with_the_field_named(
    control_plane: cluster.ControlPlane, rules_namespace: str, rule: Rule[ModelRolloutSpec]
) -> None:
    assert rule.name in CEL_CASES, f"no manifest breaks rule {rule.name}: add one to CEL_CASES"
    manifest = _valid("cel-case")
    CEL_CASES[rule.name](manifest["spec"])
    with pytest.raises(ValidationError) as caught:
        ModelRolloutSpec.model_validate(manifest["spec"])
    error = caught.value.errors()[0]["ctx"]["error"]
    assert isinstance(error, SpecError) and error.field == rule.field
    assert error.rule.startswith(rule.message.partition(" ({")[0]), error.rule
    done = apply(control_plane, rules_namespace, manifest)
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert f"spec.{rule.field}: Invalid value" in done.stderr, done.stderr
    assert f"{rule.field}: {rule.static_message}" in done.stderr, done.stderr  # this rule, not another one


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[JSON], None]:
    def change(spec: JSON) -> None:
        node: Any = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set(("steps", 2, "setWeight"), 101), "spec.steps[2].setWeight: Invalid value: 101"),
        (_set(("steps", 0, "setWeight"), -1), "spec.steps[0].setWeight: Invalid value: -1"),
        (_set(("steps", 1), {"pause": {"duration": "soon"}}), "spec.steps[1].pause.duration: Invalid value"),
        (_set(("analysis", "metrics", 0, "interval"), "0s"), "spec.analysis.metrics[0].interval: Invalid value"),
        (_set(("analysis", "metrics", 0, "provider"), {"datadog": {}}), 'unknown field "spec.analysis.metrics[0]'),
        (_set(("analysis", "metrics", 0, "baseline"), "yesterday"), "spec.analysis.metrics[0].baseline: Unsupported"),
        (_set(("model", "artifact"), "md5:abc"), "spec.model.artifact: Invalid value"),
    ],
    ids=[
        "weight-above-100",
        "negative-weight",
        "unparsable-duration",
        "zero-interval",
        "unknown-provider",
        "unknown-baseline",
        "not-a-digest",
    ],
)
def test_schema_rejects_bad_values_with_the_field_named(
    control_plane: cluster.ControlPlane, rules_namespace: str, change: Callable[[JSON], None], expected: str
) -> None:
    manifest = _valid("schema-case")
    change(manifest["spec"])
    with pytest.raises(ValidationError):  # the models refuse it too
        ModelRolloutSpec.model_validate(manifest["spec"])
    done = apply(control_plane, rules_namespace, manifest)
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert expected in done.stderr, done.stderr

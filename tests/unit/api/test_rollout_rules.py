"""The ModelRollout rule table drives both sides: the models' check and the CRD's CEL rules.

As in test_rules.py, each rule has a spec here that breaks it and no other rule, and the models refuse that
spec naming the rule's field. Beyond that, the CEL expressions are evaluated here, by a CEL interpreter
(cel-python) on the object as the API server would store it (its schema defaults applied), and must refuse
exactly what the predicates refuse: for every spec below and for random specs.
"""

from __future__ import annotations

import copy
import functools
import itertools
from typing import Any

import celpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from fedfleet.api import crd
from fedfleet.api.federatedjob import SpecError
from fedfleet.api.modelrollout import ModelRolloutSpec
from fedfleet.api.rollout_rules import ROLLOUT_RULES
from fedfleet.api.rules import Rule

DIGEST = "sha256:" + "ab" * 32
ACCURACY = {
    "name": "accuracy",
    "successCondition": "result >= baseline - 0.02",
    "provider": {"builtin": {"metric": "accuracy"}},
}
#: A spec that keeps every rule; BREAKS replaces some of its top-level fields.
BASE: dict[str, Any] = {
    "model": {"artifact": DIGEST},
    "analysis": {"metrics": [ACCURACY]},
    "steps": [{"setWeight": 10}, {"analysis": {"metrics": ["accuracy"]}}, {"setWeight": 50}, {"pause": {}}],
}


def _metric(**changes: Any) -> dict[str, Any]:
    return {**ACCURACY, **changes}


#: Per rule name, the top-level fields that, put in BASE, break that rule and keep every other.
BREAKS: dict[str, dict[str, Any]] = {
    "one-model-source": {"model": {"federatedJob": "mnist-fedavg", "artifact": DIGEST}},
    "at-least-one-step": {"steps": []},
    "one-action-per-step": {"steps": [{"setWeight": 10}, {"setWeight": 20, "pause": {"duration": "1m"}}]},
    "weights-never-decrease": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 10}]},
    "metric-has-one-provider": {"analysis": {"metrics": [_metric(provider={})]}},
    "metric-has-a-condition": {"analysis": {"metrics": [_metric(successCondition="")]}},
    "metric-names-unique": {"analysis": {"metrics": [ACCURACY, _metric(failureCondition="result < 0.5")]}},
    "analysis-steps-name-metrics": {"steps": [{"setWeight": 1}, {"analysis": {"metrics": ["accuracy", "latency"]}}]},
    "background-names-metrics": {"analysis": {"metrics": [ACCURACY], "background": ["latency"]}},
    "control-baseline-needs-control-cohort": {"analysis": {"metrics": [_metric(baseline="control")]}},
    "selector-values-fit-operator": {
        "selector": {"matchExpressions": [{"key": "os", "operator": "Exists", "values": ["android"]}]}
    },
}
RULE_IDS = [rule.name for rule in ROLLOUT_RULES]


def _wire(changes: dict[str, Any]) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), **copy.deepcopy(changes)}


def _unchecked(wire: dict[str, Any]) -> ModelRolloutSpec:
    """The spec with every field validated but no cross-field rule run, so a test can ask each rule."""
    values: dict[str, Any] = {}
    for name, info in ModelRolloutSpec.model_fields.items():
        if info.alias in wire:
            values[name] = TypeAdapter(info.annotation).validate_python(wire[info.alias])
    return ModelRolloutSpec.model_construct(**values)


def _broken(spec: ModelRolloutSpec) -> list[str]:
    return [rule.name for rule in ROLLOUT_RULES if not rule.holds(spec)]


def _refusal(wire: dict[str, Any]) -> SpecError:
    with pytest.raises(ValidationError) as caught:
        ModelRolloutSpec.model_validate(wire)
    (error,) = caught.value.errors()
    refusal = error["ctx"]["error"]
    assert isinstance(refusal, SpecError)
    return refusal


# --- the CEL side, as the API server would run it -----------------------------------------------------------


def _spec_schema() -> dict[str, Any]:
    return crd.spec_schema(crd.MODEL_ROLLOUT)


def _stored(value: Any, node: dict[str, Any]) -> Any:
    """The API server's defaulting: absent properties from `default`, recursively, in list items too."""
    if isinstance(value, list) and "items" in node:
        return [_stored(item, node["items"]) for item in value]
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in node.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = _stored(out[name], sub)
    return out


def _is_sorted(items: celpy.celtypes.ListType) -> celpy.celtypes.BoolType:
    """The Kubernetes CEL list library's `isSorted()`: ascending, equal neighbours allowed."""
    return celpy.celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))


@functools.cache
def _program(expression: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expression), functions={"isSorted": _is_sorted})


def _refused_by_cel(wire: dict[str, Any]) -> list[str]:
    stored = celpy.json_to_cel(_stored(wire, _spec_schema()))
    return [rule.name for rule in ROLLOUT_RULES if not bool(_program(rule.cel).evaluate({"self": stored}))]


def _cel_validations() -> list[dict[str, str]]:
    validations: list[dict[str, str]] = _spec_schema()["x-kubernetes-validations"]
    return validations


# --- the table ----------------------------------------------------------------------------------------------


def test_every_rule_has_a_spec_that_breaks_it() -> None:
    assert len(set(RULE_IDS)) == len(RULE_IDS), "two rules share a name"
    assert sorted(BREAKS) == sorted(RULE_IDS), "a rule without a spec here, or a spec for no rule"


def test_the_base_keeps_every_rule_on_both_sides() -> None:
    assert _broken(_unchecked(BASE)) == []
    assert _refused_by_cel(BASE) == []
    ModelRolloutSpec.model_validate(BASE)


@pytest.mark.parametrize("rule", ROLLOUT_RULES, ids=RULE_IDS)
def test_the_field_is_a_field_of_the_spec(rule: Rule[ModelRolloutSpec]) -> None:
    # The API server refuses a CRD whose fieldPath names no field, and SpecError.field is shown to users.
    model: type[BaseModel] = ModelRolloutSpec
    parts = rule.field.split(".")
    for depth, part in enumerate(parts, start=1):
        by_alias = {info.alias: info for info in model.model_fields.values()}
        assert part in by_alias, f"{rule.field}: no field {part!r} in {model.__name__}"
        annotation = by_alias[part].annotation
        if depth < len(parts):
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), rule.field
            model = annotation


# --- the models' side ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ROLLOUT_RULES, ids=RULE_IDS)
def test_the_spec_breaks_its_rule_alone(rule: Rule[ModelRolloutSpec]) -> None:
    assert _broken(_unchecked(_wire(BREAKS[rule.name]))) == [rule.name]


@pytest.mark.parametrize("rule", ROLLOUT_RULES, ids=RULE_IDS)
def test_the_models_refuse_it_naming_the_field_with_the_values(rule: Rule[ModelRolloutSpec]) -> None:
    wire = _wire(BREAKS[rule.name])
    refusal = _refusal(wire)
    spec = _unchecked(wire)
    assert (refusal.field, refusal.rule) == (rule.field, rule.explain(spec))
    values = rule.values(spec)
    assert set(values) == rule.placeholders
    for value in values.values():
        assert f"({value})" in refusal.rule


def test_the_messages_name_the_culprit() -> None:
    # What a user reads: which step, which metric, which weights.
    assert _refusal(_wire(BREAKS["one-action-per-step"])).rule.endswith("(steps[1] sets setWeight and pause)")
    assert _refusal(_wire({"steps": [{"setWeight": 1}, {}]})).rule.endswith("(steps[1] sets none)")
    assert _refusal(_wire(BREAKS["weights-never-decrease"])).rule.endswith("(10 after 50)")
    assert _refusal(_wire(BREAKS["analysis-steps-name-metrics"])).rule.endswith("(steps[1] names latency)")
    assert _refusal(_wire(BREAKS["metric-names-unique"])).rule.endswith("(accuracy)")
    neither = _refusal(_wire({"model": {}}))
    assert neither.field == "model" and "exactly one of federatedJob and artifact" in neither.rule


def test_the_first_broken_rule_in_table_order_is_reported() -> None:
    checked = 0
    for first, second in itertools.combinations(ROLLOUT_RULES, 2):
        wire = _wire({**BREAKS[first.name], **BREAKS[second.name]})
        spec = _unchecked(wire)
        broken = [rule for rule in ROLLOUT_RULES if not rule.holds(spec)]
        if len(broken) < 2:  # the two changes replace the same field
            continue
        refusal = _refusal(wire)
        assert (refusal.field, refusal.rule) == (broken[0].field, broken[0].explain(spec)), (first.name, second.name)
        checked += 1
    assert checked > len(ROLLOUT_RULES)


# --- the CRD's side -----------------------------------------------------------------------------------------


def test_the_crd_has_one_cel_rule_per_table_entry_in_order() -> None:
    assert [v["rule"] for v in _cel_validations()] == [rule.cel for rule in ROLLOUT_RULES]


@pytest.mark.parametrize("rule", ROLLOUT_RULES, ids=RULE_IDS)
def test_the_cel_rule_names_the_same_field_with_a_fixed_message(rule: Rule[ModelRolloutSpec]) -> None:
    (validation,) = [v for v in _cel_validations() if v["rule"] == rule.cel]
    assert validation == {
        "rule": rule.cel,
        "message": f"{rule.field}: {rule.static_message}",
        "fieldPath": f".{rule.field}",
        "reason": "FieldValueInvalid",
    }
    assert "{" not in validation["message"] and "}" not in validation["message"]
    assert "()" not in validation["message"] and "  " not in validation["message"]


@pytest.mark.parametrize("rule", ROLLOUT_RULES, ids=RULE_IDS)
def test_the_cel_rule_refuses_the_spec_that_breaks_it_and_only_that_rule_does(rule: Rule[ModelRolloutSpec]) -> None:
    assert _refused_by_cel(_wire(BREAKS[rule.name])) == [rule.name]


# Small vocabularies, so that random specs break the rules often, alone and together.
_NAMES = st.sampled_from(["accuracy", "loss", "latency"])
_PROVIDERS = st.sampled_from(
    [{}, {"builtin": {"metric": "loss"}}, {"prometheus": {"query": "up"}}, {"builtin": {"metric": "loss"},
     "prometheus": {"query": "up"}}]
)  # fmt: skip
_METRICS = st.fixed_dictionaries(
    {"name": _NAMES, "provider": _PROVIDERS},
    optional={
        "successCondition": st.sampled_from(["", "result > 0.5"]),
        "failureCondition": st.sampled_from(["", "result < 0.1"]),
        "baseline": st.sampled_from(["stable", "control", "none"]),
    },
)
_STEPS = st.fixed_dictionaries(
    {},
    optional={
        "setWeight": st.integers(0, 100),
        "pause": st.sampled_from([{}, {"duration": "30s"}]),
        "analysis": st.fixed_dictionaries({"metrics": st.lists(_NAMES, min_size=1, max_size=2)}),
    },
)
_REQUIREMENTS = st.fixed_dictionaries(
    {"key": st.just("os"), "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"])},
    optional={"values": st.lists(st.just("android"), max_size=1)},
)
_SPECS = st.fixed_dictionaries(
    {
        "model": st.sampled_from([{}, {"artifact": DIGEST}, {"federatedJob": "j"}, {"artifact": DIGEST,
                                  "federatedJob": "j"}]),
        "steps": st.lists(_STEPS, max_size=5),
    },
    optional={
        "controlCohort": st.booleans(),
        "analysis": st.fixed_dictionaries(
            {}, optional={"metrics": st.lists(_METRICS, max_size=3), "background": st.lists(_NAMES, max_size=2)}
        ),
        "selector": st.fixed_dictionaries({"matchExpressions": st.lists(_REQUIREMENTS, max_size=2)}),
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_SPECS)
def test_cel_and_predicates_refuse_the_same_random_specs(wire: dict[str, Any]) -> None:
    assert _refused_by_cel(wire) == _broken(_unchecked(wire))

"""The cross-field rule table drives both sides: the models' check and the CRD's CEL rules.

Each rule has a spec here that breaks it and no other rule: the models refuse that spec for the rule, and
the CRD holds the rule's CEL expression for the same field. A rule added to the table without a spec here
fails `test_every_rule_has_a_spec_that_breaks_it`. Whether each CEL expression says what its predicate says
is for a real API server to tell: tests/e2e/test_operator_rules.py sends it such manifests.

The rules on the job's name (NAME_RULES) are short enough to evaluate here too, with a CEL interpreter;
tests/e2e/test_operator_failures.py sends such names to the API server.
"""

from __future__ import annotations

import itertools
from typing import Any

import celpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from fedfleet.api import crd
from fedfleet.api.federatedjob import FederatedJobSpec, SpecError, Strategy
from fedfleet.api.manifest import ManifestError, job_from_object
from fedfleet.api.rules import (
    CROSS_FIELD_RULES,
    INDIVIDUAL_UPDATE_STRATEGIES,
    KRUM_STRATEGIES,
    MAX_NAME_LENGTH,
    NAME_RULES,
    SUM_STRATEGIES,
    Rule,
)

_SECAGG = {"secureAggregation": {"enabled": True}}
_NOISE = {"noiseMultiplier": 1.0}

#: Per rule name, a spec (besides `rounds`) that breaks that rule and keeps every other.
BREAKS: dict[str, dict[str, Any]] = {
    "ports-differ": {"aggregator": {"port": 9000, "httpPort": 9000}},
    "min-reports-within-cohort": {"cohort": {"clientsPerRound": 4, "minReports": 5}, "simulation": {"devices": 10}},
    "cohort-within-fleet": {"cohort": {"clientsPerRound": 11}, "simulation": {"devices": 10}},
    "federated-evaluation-within-fleet": {
        "evaluation": {"federatedEvery": 2, "federatedClients": 11},
        "simulation": {"devices": 10},
    },
    "test-split-within-dataset": {"simulation": {"dataset": "digits", "testSamples": 1797}},
    "krum-has-enough-reports": {
        "aggregation": {"strategy": "krum", "byzantineCount": 2},
        "cohort": {"clientsPerRound": 6},
    },
    "multi-krum-selects-from-reports": {
        "aggregation": {"strategy": "multiKrum", "multiKrumSelect": 8},
        "cohort": {"clientsPerRound": 6},
    },
    "secure-aggregation-needs-a-sum-strategy": {"aggregation": {"strategy": "median"}, "privacy": _SECAGG},
    "distributed-noise-needs-secure-aggregation": {
        "privacy": {"differentialPrivacy": {"mode": "distributed", **_NOISE}}
    },
    "differential-privacy-needs-a-sum-strategy": {
        "aggregation": {"strategy": "trimmedMean"},
        "privacy": {"differentialPrivacy": {"mode": "central", **_NOISE}},
    },
    "secure-aggregation-needs-two-reports": {"cohort": {"clientsPerRound": 3, "minReports": 1}, "privacy": _SECAGG},
    "differential-privacy-needs-a-noise-level": {"privacy": {"differentialPrivacy": {"mode": "central"}}},
    "distributed-noise-has-a-fixed-clip-norm": {
        "privacy": {**_SECAGG, "differentialPrivacy": {"mode": "distributed", "adaptiveClipping": True, **_NOISE}}
    },
}
RULE_IDS = [rule.name for rule in CROSS_FIELD_RULES]


def _unchecked(changes: dict[str, Any]) -> FederatedJobSpec:
    """The spec with every section validated but no cross-field rule run, so a test can ask each rule."""
    values: dict[str, Any] = {"rounds": 3}
    for name, info in FederatedJobSpec.model_fields.items():
        if info.alias in changes:
            section, value = info.annotation, changes[info.alias]
            if isinstance(section, type) and issubclass(section, BaseModel):
                value = section.model_validate(value)
            values[name] = value
    return FederatedJobSpec.model_construct(**values)


def _broken(spec: FederatedJobSpec) -> list[Rule]:
    return [rule for rule in CROSS_FIELD_RULES if not rule.holds(spec)]


def _refusal(changes: dict[str, Any]) -> SpecError:
    """The one error the models give for a spec that breaks cross-field rules."""
    with pytest.raises(ValidationError) as caught:
        FederatedJobSpec.model_validate({"rounds": 3, **changes})
    (error,) = caught.value.errors()
    refusal = error["ctx"]["error"]
    assert isinstance(refusal, SpecError)
    return refusal


def _cel_validations() -> list[dict[str, str]]:
    spec = crd.build_federatedjob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    validations: list[dict[str, str]] = spec["x-kubernetes-validations"]
    return validations


# --- the table ------------------------------------------------------------------------------------------


def test_every_rule_has_a_spec_that_breaks_it() -> None:
    assert len(set(RULE_IDS)) == len(RULE_IDS), "two rules share a name"
    assert sorted(BREAKS) == sorted(RULE_IDS), "a rule without a spec here, or a spec for no rule"


def test_the_defaults_keep_every_rule() -> None:
    assert _broken(FederatedJobSpec(rounds=1)) == []


def test_strategy_groups_cover_every_strategy_once() -> None:
    # A new strategy must be put in one group: it decides whether secure aggregation and DP can use it.
    individual, summed = set(INDIVIDUAL_UPDATE_STRATEGIES), set(SUM_STRATEGIES)
    assert individual | summed == {strategy.value for strategy in Strategy}
    assert not individual & summed
    assert set(KRUM_STRATEGIES) <= individual


@pytest.mark.parametrize("rule", CROSS_FIELD_RULES, ids=RULE_IDS)
def test_the_field_is_a_field_of_the_spec(rule: Rule) -> None:
    # The API server refuses a CRD whose fieldPath names no field, and SpecError.field is shown to users.
    model: type[BaseModel] = FederatedJobSpec
    parts = rule.field.split(".")
    for depth, part in enumerate(parts, start=1):
        by_alias = {info.alias: info for info in model.model_fields.values()}
        assert part in by_alias, f"{rule.field}: no field {part!r} in {model.__name__}"
        annotation = by_alias[part].annotation
        if depth < len(parts):
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), rule.field
            model = annotation


# --- the models' side -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", CROSS_FIELD_RULES, ids=RULE_IDS)
def test_the_spec_breaks_its_rule_alone(rule: Rule) -> None:
    assert [broken.name for broken in _broken(_unchecked(BREAKS[rule.name]))] == [rule.name]


@pytest.mark.parametrize("rule", CROSS_FIELD_RULES, ids=RULE_IDS)
def test_the_models_refuse_it_naming_the_field_with_the_values(rule: Rule) -> None:
    refusal = _refusal(BREAKS[rule.name])
    spec = _unchecked(BREAKS[rule.name])
    assert (refusal.field, refusal.rule) == (rule.field, rule.explain(spec))
    values = rule.values(spec)
    assert set(values) == rule.placeholders
    for value in values.values():
        assert f"({value})" in refusal.rule


def test_the_first_broken_rule_in_table_order_is_reported() -> None:
    # Specs that break two rules: the models report one, always the one listed first.
    checked = 0
    for first, second in itertools.combinations(CROSS_FIELD_RULES, 2):
        changes = _merged(BREAKS[first.name], BREAKS[second.name])
        spec = _unchecked(changes)
        broken = _broken(spec)
        if len(broken) < 2:  # the two changes undo each other (both set cohort, say)
            continue
        refusal = _refusal(changes)
        assert (refusal.field, refusal.rule) == (broken[0].field, broken[0].explain(spec)), (first.name, second.name)
        checked += 1
    assert checked > len(CROSS_FIELD_RULES)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


# --- the CRD's side -------------------------------------------------------------------------------------


def test_the_crd_has_one_cel_rule_per_table_entry_in_order() -> None:
    assert [v["rule"] for v in _cel_validations()] == [rule.cel for rule in CROSS_FIELD_RULES]


@pytest.mark.parametrize("rule", CROSS_FIELD_RULES, ids=RULE_IDS)
def test_the_cel_rule_names_the_same_field_with_a_fixed_message(rule: Rule) -> None:
    (validation,) = [v for v in _cel_validations() if v["rule"] == rule.cel]
    assert validation == {
        "rule": rule.cel,
        "message": f"{rule.field}: {rule.static_message}",
        "fieldPath": f".{rule.field}",
        "reason": "FieldValueInvalid",
    }
    # CEL messages are fixed text: every placeholder is left out, with its parentheses.
    assert "{" not in validation["message"] and "}" not in validation["message"]
    assert "()" not in validation["message"] and "  " not in validation["message"]


# --- the job's name ---------------------------------------------------------------------------------------

#: Per name rule, a name that breaks that rule and keeps every other.
NAME_BREAKS: dict[str, str] = {
    "name-is-a-dns-label": "my.job",
    "name-leaves-room-for-children": "j" * (MAX_NAME_LENGTH + 1),
}
NAME_IDS = [rule.name for rule in NAME_RULES]
#: Names the API server accepts for a custom resource (DNS-1123 subdomains) that no Service could be named after.
NOT_LABELS = ["my.job", "1st-job", "a.b.c", "9", "x.y-z"]
LABELS = ["a", "digits-fedavg", "j" * MAX_NAME_LENGTH, "a1-b2", "x9"]


def _named(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "fedfleet.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": name},
        "spec": {"rounds": 1},
    }


def _root_validations() -> list[dict[str, Any]]:
    root = crd.build_federatedjob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validations: list[dict[str, Any]] = root["x-kubernetes-validations"]
    return validations


def _cel_holds(rule: Rule, name: str) -> bool:
    # The rule as CEL reads the stored object (cel-python; the API server's `matches` is RE2, which reads this
    # pattern the same way). The creation-only wrapper is the API server's business: see the test below.
    env = celpy.Environment()
    program = env.program(env.compile(rule.cel))
    return bool(program.evaluate({"self": celpy.json_to_cel({"metadata": {"name": name}})}))


def test_every_name_rule_has_a_name_that_breaks_it_alone() -> None:
    assert sorted(NAME_BREAKS) == sorted(NAME_IDS)
    for rule in NAME_RULES:
        assert [r.name for r in NAME_RULES if not r.holds(NAME_BREAKS[rule.name])] == [rule.name]


@pytest.mark.parametrize("name", NOT_LABELS)
def test_a_name_no_service_may_have_is_refused_by_the_models_naming_metadata_name(name: str) -> None:
    with pytest.raises(ManifestError) as caught:
        job_from_object(_named(name), source="job.yaml")
    assert str(caught.value) == (f"job.yaml: metadata.name: {NAME_RULES[0].message} (got {name!r})")


def test_a_name_too_long_for_its_children_is_refused_with_its_length() -> None:
    name = NAME_BREAKS["name-leaves-room-for-children"]
    with pytest.raises(ManifestError) as caught:
        job_from_object(_named(name), source="job.yaml")
    message = str(caught.value)
    assert message.startswith(f"job.yaml: metadata.name: must be at most {MAX_NAME_LENGTH} characters (53 given)")
    assert "<name>-aggregator" in message


@pytest.mark.parametrize("name", LABELS)
def test_names_children_can_be_made_from_are_accepted(name: str) -> None:
    assert job_from_object(_named(name)).metadata.name == name


@pytest.mark.parametrize("rule", NAME_RULES, ids=NAME_IDS)
def test_the_name_rule_is_cel_at_the_root_on_create_naming_metadata_name(rule: Rule) -> None:
    (validation,) = [v for v in _root_validations() if rule.cel in v["rule"]]
    assert validation == {
        # Names never change; checked on create only, so a job stored before the rule keeps getting status
        # patches and can still lose its finalizer (the root's rules run on every write).
        "rule": f"oldSelf.hasValue() || ({rule.cel})",
        "optionalOldSelf": True,
        "message": f"metadata.name: {rule.static_message}",
        "fieldPath": ".metadata.name",
        "reason": "FieldValueInvalid",
    }
    assert "{" not in validation["message"] and "()" not in validation["message"]


def test_the_root_declares_the_name_its_rules_point_at() -> None:
    # A CEL fieldPath must exist in the schema, and at the root `metadata` may declare `name` and nothing else.
    root = crd.build_federatedjob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert root["properties"]["metadata"] == {"type": "object", "properties": {"name": {"type": "string"}}}
    assert [v["rule"] for v in _root_validations()] == [f"oldSelf.hasValue() || ({r.cel})" for r in NAME_RULES]


@pytest.mark.parametrize(
    "name", [*NOT_LABELS, *LABELS, *NAME_BREAKS.values(), "j" * 63, "a-" * 26 + "b", "job-", "-job", "Job"]
)
def test_cel_and_the_predicates_agree_on_these_names(name: str) -> None:
    assert [_cel_holds(rule, name) for rule in NAME_RULES] == [rule.holds(name) for rule in NAME_RULES]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab9-.Z_", min_size=1, max_size=60))
def test_cel_and_the_predicates_agree_on_any_name(name: str) -> None:
    assert [_cel_holds(rule, name) for rule in NAME_RULES] == [rule.holds(name) for rule in NAME_RULES]

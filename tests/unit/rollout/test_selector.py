"""Device selectors: Kubernetes label-selector semantics over device attributes, and their bad shapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfleet.rollout.errors import InvalidField
from fedfleet.rollout.selector import (
    MAX_ATTRIBUTES,
    MAX_EXPRESSIONS,
    MAX_VALUES,
    DeviceSelector,
    Operator,
    Requirement,
    check_attributes,
)

PIXEL = {"deviceClass": "phone", "os": "android", "region": "eu-west", "appVersion": "4.2.0"}
IPAD = {"deviceClass": "tablet", "os": "ios", "region": "us-east"}
BARE: dict[str, str] = {}


def test_an_empty_selector_matches_every_device() -> None:
    for selector in (DeviceSelector(), DeviceSelector.from_dict({}), DeviceSelector.from_dict(None)):
        assert selector.is_empty
        assert selector.matches(PIXEL) and selector.matches(IPAD) and selector.matches(BARE)


def test_match_labels_needs_every_pair() -> None:
    selector = DeviceSelector({"os": "android", "region": "eu-west"})
    assert selector.matches(PIXEL)
    assert not selector.matches({**PIXEL, "region": "us-east"})
    assert not selector.matches({"os": "android"})  # a missing attribute is not a match


@pytest.mark.parametrize(
    ("operator", "values", "pixel", "ipad", "bare"),
    [
        (Operator.IN, ("android", "linux"), True, False, False),
        (Operator.NOT_IN, ("android", "linux"), False, True, True),  # NotIn holds when the key is absent
        (Operator.EXISTS, (), True, True, False),
        (Operator.DOES_NOT_EXIST, (), False, False, True),
    ],
)
def test_each_operator_follows_kubernetes(
    operator: Operator, values: tuple[str, ...], pixel: bool, ipad: bool, bare: bool
) -> None:
    selector = DeviceSelector(match_expressions=(Requirement("os", operator, values),))
    assert (selector.matches(PIXEL), selector.matches(IPAD), selector.matches(BARE)) == (pixel, ipad, bare)


def test_labels_and_expressions_must_all_hold() -> None:
    selector = DeviceSelector.from_dict(
        {
            "matchLabels": {"deviceClass": "phone"},
            "matchExpressions": [
                {"key": "region", "operator": "In", "values": ["eu-west", "eu-north"]},
                {"key": "beta", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.matches(PIXEL)
    assert not selector.matches({**PIXEL, "beta": "true"})
    assert not selector.matches({**PIXEL, "deviceClass": "tablet"})
    assert not selector.matches({**PIXEL, "region": "us-east"})


keys = st.sampled_from(["os", "region", "tier", "example.com/class"])
label_values = st.sampled_from(["a", "b", "c", "eu-west", "4.2.0"])
attribute_maps = st.dictionaries(keys, label_values, max_size=4)


@settings(max_examples=200, deadline=None)
@given(attribute_maps, keys, st.lists(label_values, min_size=1, max_size=3, unique=True))
def test_in_and_not_in_are_complements_exactly_when_the_key_is_present(
    attributes: dict[str, str], key: str, values: list[str]
) -> None:
    is_in = Requirement(key, Operator.IN, tuple(values)).matches(attributes)
    not_in = Requirement(key, Operator.NOT_IN, tuple(values)).matches(attributes)
    exists = Requirement(key, Operator.EXISTS).matches(attributes)
    absent = Requirement(key, Operator.DOES_NOT_EXIST).matches(attributes)
    assert exists != absent
    if exists:
        assert is_in != not_in
    else:
        assert not is_in and not_in


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(keys, label_values, max_size=3),
    st.lists(
        st.tuples(keys, st.sampled_from(list(Operator)), st.lists(label_values, min_size=1, max_size=3)),
        max_size=3,
    ),
    attribute_maps,
)
def test_the_kubernetes_shape_round_trips(
    labels: dict[str, str], terms: list[tuple[str, Operator, list[str]]], attributes: dict[str, str]
) -> None:
    requirements = tuple(
        Requirement(key, op, tuple(values) if op in (Operator.IN, Operator.NOT_IN) else ()) for key, op, values in terms
    )
    selector = DeviceSelector(labels, requirements)
    again = DeviceSelector.from_dict(selector.to_dict())
    assert again == selector and hash(again) == hash(selector)
    assert again.matches(attributes) == selector.matches(attributes)


def test_a_selector_does_not_change_when_the_callers_dict_does() -> None:
    labels = {"os": "android"}
    selector = DeviceSelector(labels)
    labels["os"] = "ios"
    assert selector.matches(PIXEL) and not selector.matches(IPAD)
    with pytest.raises(TypeError):
        selector.match_labels["os"] = "ios"  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"matchExpressions": [{"key": "os", "operator": "In"}]}, "selector.matchExpressions[0].values", "non-empty"),
        ({"matchExpressions": [{"key": "os", "operator": "NotIn", "values": []}]}, "values", "non-empty"),
        ({"matchExpressions": [{"key": "os", "operator": "Exists", "values": ["a"]}]}, "values", "must be empty"),
        ({"matchExpressions": [{"key": "os", "operator": "DoesNotExist", "values": ["a"]}]}, "values", "empty"),
        ({"matchExpressions": [{"key": "os", "operator": "Gt", "values": ["1"]}]}, "operator", "one of In"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "selector.matchExpressions[0].key", "non-empty"),
        ({"matchExpressions": [{"key": "os", "operator": "In", "values": "android"}]}, "values", "list"),
        ({"matchExpressions": [{"key": "os", "operator": "In", "values": [3]}]}, "values[0]", "string"),
        ({"matchExpressions": [{"key": "os", "operator": "Exists", "value": "x"}]}, "[0].value", "unknown"),
        ({"matchExpressions": {"key": "os"}}, "selector.matchExpressions", "list"),
        ({"matchLabels": ["os"]}, "selector.matchLabels", "mapping"),
        ({"matchLabels": {"bad key": "x"}}, "selector.matchLabels", "qualified name"),
        ({"matchLabels": {"os": "has space"}}, "selector.matchLabels['os']", "label value"),
        ({"matchLabels": {"os": "x" * 64}}, "selector.matchLabels['os']", "63"),
        ({"matchLabels": {"os": 7}}, "selector.matchLabels['os']", "string"),
        ({"matchLabel": {"os": "android"}}, "selector.matchLabel", "unknown field"),
        ("os=android", "selector", "object"),
    ],
)
def test_bad_shapes_are_refused_naming_the_field(data: object, field: str, words: str) -> None:
    with pytest.raises(InvalidField) as error:
        DeviceSelector.from_dict(data)
    assert field in error.value.field
    assert words in error.value.rule


def test_sizes_are_bounded() -> None:
    too_many_values = {"matchExpressions": [{"key": "os", "operator": "In", "values": ["a"] * (MAX_VALUES + 1)}]}
    too_many_terms = {"matchExpressions": [{"key": "os", "operator": "Exists"}] * (MAX_EXPRESSIONS + 1)}
    for data in (too_many_values, too_many_terms):
        with pytest.raises(InvalidField, match="at most"):
            DeviceSelector.from_dict(data)
    with pytest.raises(InvalidField, match="at most"):
        check_attributes({f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)})


def test_device_attributes_are_checked_where_they_enter() -> None:
    assert check_attributes(PIXEL) == PIXEL
    assert check_attributes({"example.com/tier": ""}) == {"example.com/tier": ""}  # empty values are allowed
    for bad in ({"": "x"}, {"os": 1}, {"os\n": "x"}, {"os": "a" * 100}, ["os"]):
        with pytest.raises(InvalidField):
            check_attributes(bad)


def test_requirements_built_in_code_are_checked_too() -> None:
    with pytest.raises(InvalidField, match="non-empty"):
        Requirement("os", Operator.IN)
    with pytest.raises(InvalidField, match="empty"):
        Requirement("os", Operator.EXISTS, ("x",))
    with pytest.raises(InvalidField):
        DeviceSelector(match_expressions=[Requirement("os", Operator.EXISTS)])  # type: ignore[arg-type]

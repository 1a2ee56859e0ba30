"""Which devices a rollout applies to: a Kubernetes label selector over the attributes a device reports.

The semantics are those of `metav1.LabelSelector`: every `matchLabels` pair and every requirement of
`matchExpressions` must hold; `In` needs the key present with one of the values, `NotIn` holds when the key
is absent or has none of the values, `Exists` / `DoesNotExist` test only the key; an empty selector matches
every device. Keys and values follow the label syntax too (a qualified name; a value of at most 63
characters), so a selector that `kubectl apply` accepted in a ModelRollout means the same here.

Device attributes come from devices, so `check_attributes` bounds and checks them where they enter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from fedfleet.rollout.errors import InvalidField, shown

#: Bounds on what one selector may hold: a segment of a fleet is described in a handful of terms.
MAX_LABELS = 32
MAX_EXPRESSIONS = 32
MAX_VALUES = 64
#: Bounds on the attributes one device may report.
MAX_ATTRIBUTES = 32

# The label syntax of Kubernetes (apimachinery's validation.IsQualifiedName and IsValidLabelValue).
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_NAME_RE = re.compile(_NAME)
_PREFIX_RE = re.compile(_DNS_SUBDOMAIN)
_MAX_NAME = 63
_MAX_PREFIX = 253


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


_TAKES_VALUES = frozenset({Operator.IN, Operator.NOT_IN})


@dataclass(frozen=True)
class Requirement:
    """One term of `matchExpressions`."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_requirement(self.key, self.operator, self.values, "matchExpressions[]")

    def matches(self, attributes: Mapping[str, str]) -> bool:
        present = self.key in attributes
        match self.operator:
            case Operator.IN:
                return present and attributes[self.key] in self.values
            case Operator.NOT_IN:
                return not present or attributes[self.key] not in self.values
            case Operator.EXISTS:
                return present
            case Operator.DOES_NOT_EXIST:
                return not present

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator.value}
        if self.operator in _TAKES_VALUES:
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class DeviceSelector:
    """A segment of the fleet. `DeviceSelector()` is the whole fleet."""

    match_labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    match_expressions: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.match_labels, Mapping):
            raise InvalidField("matchLabels", "must be a mapping of attribute names to values")
        if len(self.match_labels) > MAX_LABELS:
            raise InvalidField("matchLabels", f"must have at most {MAX_LABELS} entries")
        for key, value in self.match_labels.items():
            _check_key(key, "matchLabels")
            _check_value(value, f"matchLabels[{key!r}]")
        if not isinstance(self.match_expressions, tuple) or not all(
            isinstance(r, Requirement) for r in self.match_expressions
        ):
            raise InvalidField("matchExpressions", "must be a tuple of Requirement")
        if len(self.match_expressions) > MAX_EXPRESSIONS:
            raise InvalidField("matchExpressions", f"must have at most {MAX_EXPRESSIONS} entries")
        # A read-only copy: the selector is frozen, and a caller's dict must not change it afterwards.
        object.__setattr__(self, "match_labels", MappingProxyType(dict(self.match_labels)))

    def __hash__(self) -> int:
        return hash((frozenset(self.match_labels.items()), self.match_expressions))

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(attributes.get(key) == value for key, value in self.match_labels.items()) and all(
            requirement.matches(attributes) for requirement in self.match_expressions
        )

    def to_dict(self) -> dict[str, Any]:
        """The camelCase Kubernetes shape; an empty selector is `{}`."""
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [r.to_dict() for r in self.match_expressions]
        return out

    @classmethod
    def from_dict(cls, data: object, field: str = "selector") -> DeviceSelector:
        """Read the Kubernetes shape `{"matchLabels": {...}, "matchExpressions": [{key, operator, values}]}`.

        `None` is the whole fleet, like an absent `spec.selector`. Errors name the path below `field`.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidField(field, "must be an object with matchLabels and/or matchExpressions")
        unknown = sorted(str(k) for k in data if k not in ("matchLabels", "matchExpressions"))
        if unknown:
            raise InvalidField(f"{field}.{unknown[0]}", "unknown field; use matchLabels or matchExpressions")
        labels = data.get("matchLabels")
        if labels is None:
            labels = {}
        if not isinstance(labels, Mapping):
            raise InvalidField(f"{field}.matchLabels", "must be a mapping of attribute names to values")
        if len(labels) > MAX_LABELS:
            raise InvalidField(f"{field}.matchLabels", f"must have at most {MAX_LABELS} entries")
        for key, value in labels.items():
            _check_key(key, f"{field}.matchLabels")
            _check_value(value, f"{field}.matchLabels[{key!r}]")
        expressions = data.get("matchExpressions")
        if expressions is None:
            expressions = []
        if not isinstance(expressions, list):
            raise InvalidField(f"{field}.matchExpressions", "must be a list")
        if len(expressions) > MAX_EXPRESSIONS:
            raise InvalidField(f"{field}.matchExpressions", f"must have at most {MAX_EXPRESSIONS} entries")
        requirements = tuple(
            _requirement_from_dict(item, f"{field}.matchExpressions[{i}]") for i, item in enumerate(expressions)
        )
        return cls(match_labels=dict(labels), match_expressions=requirements)


def check_attributes(attributes: object, field: str = "attributes") -> dict[str, str]:
    """A device's reported attributes, checked: at most MAX_ATTRIBUTES, keys and values in label syntax."""
    if not isinstance(attributes, Mapping):
        raise InvalidField(field, "must be a mapping of attribute names to values")
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidField(field, f"must have at most {MAX_ATTRIBUTES} entries")
    for key, value in attributes.items():
        _check_key(key, field)
        _check_value(value, f"{field}[{key!r}]")
    return dict(attributes)


def _requirement_from_dict(item: object, field: str) -> Requirement:
    if not isinstance(item, Mapping):
        raise InvalidField(field, "must be an object with key, operator and values")
    unknown = sorted(str(k) for k in item if k not in ("key", "operator", "values"))
    if unknown:
        raise InvalidField(f"{field}.{unknown[0]}", "unknown field; use key, operator and values")
    operator_name = item.get("operator")
    try:
        operator = Operator(str(operator_name))
    except ValueError:
        allowed = ", ".join(o.value for o in Operator)
        raise InvalidField(f"{field}.operator", f"must be one of {allowed}, not {shown(operator_name)}") from None
    values = item.get("values")
    if values is None:
        values = []
    if not isinstance(values, list):
        raise InvalidField(f"{field}.values", "must be a list of strings")
    key = _check_key(item.get("key"), f"{field}.key")
    _check_requirement(key, operator, tuple(values), field)
    return Requirement(key=key, operator=operator, values=tuple(values))


def _check_requirement(key: object, operator: object, values: object, field: str) -> None:
    _check_key(key, f"{field}.key")
    if not isinstance(operator, Operator):
        raise InvalidField(f"{field}.operator", f"must be one of {', '.join(o.value for o in Operator)}")
    if not isinstance(values, tuple):
        raise InvalidField(f"{field}.values", "must be a tuple of strings")
    if operator in _TAKES_VALUES:
        if not values:
            raise InvalidField(f"{field}.values", f"must be non-empty when operator is {operator.value}")
        if len(values) > MAX_VALUES:
            raise InvalidField(f"{field}.values", f"must have at most {MAX_VALUES} entries")
        for i, value in enumerate(values):
            _check_value(value, f"{field}.values[{i}]")
    elif values:
        raise InvalidField(f"{field}.values", f"must be empty when operator is {operator.value}")


def _check_key(key: object, field: str) -> str:
    """A qualified name: `name` or `prefix/name`, the prefix a DNS subdomain (like a label key)."""
    if not isinstance(key, str) or not key:
        raise InvalidField(field, "attribute names must be non-empty strings")
    prefix, slash, name = key.rpartition("/")
    valid_name = len(name) <= _MAX_NAME and _NAME_RE.fullmatch(name) is not None
    valid_prefix = not slash or (len(prefix) <= _MAX_PREFIX and _PREFIX_RE.fullmatch(prefix) is not None)
    if not (valid_name and valid_prefix):
        raise InvalidField(
            field,
            f"attribute name {shown(key, 80)} must be a qualified name like a label key: alphanumerics, '-', '_' "
            "and '.', at most 63 characters, optionally behind a DNS-subdomain prefix and '/'",
        )
    return key


def _check_value(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    if value and (len(value) > _MAX_NAME or _NAME_RE.fullmatch(value) is None):
        raise InvalidField(
            field,
            f"value {shown(value, 80)} must be empty or at most 63 alphanumerics, '-', '_' and '.', "
            "beginning and ending with an alphanumeric (like a label value)",
        )

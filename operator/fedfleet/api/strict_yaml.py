"""YAML as the Kubernetes API server reads a manifest: JSON-compatible values (YAML 1.2's JSON schema), no
duplicate keys, and bounded size, depth and alias expansion — checked before any Python object is built.

PyYAML alone resolves YAML 1.1: `1:30` is the integer 90 (base 60), `0x1e` is 30, `yes` is true, a repeated
key silently keeps its last value, and an alias "billion laughs" expands a kilobyte into gigabytes. A
manifest that means one thing to `kubectl apply` must not mean another to `fedfleet run`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

#: Largest manifest accepted, in characters.
MAX_DOCUMENT_CHARS = 1 << 20
#: Deepest nesting of mappings and sequences.
MAX_DEPTH = 64
#: Values (scalars and collections) a document may hold once its aliases are expanded.
MAX_EXPANDED_NODES = 100_000
#: Digits of an integer; a FederatedJob's largest field needs 10.
MAX_INT_DIGITS = 32


class StrictYamlError(ValueError):
    """The text is not a manifest the API server would accept. The message is one line."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 JSON-schema scalars and refusals instead of silent surprises."""


# Replace YAML 1.1's implicit resolvers with the JSON schema's (plus the null spellings YAML 1.2 core has).
_StrictLoader.yaml_implicit_resolvers = {}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$"), list("tf"))
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:null|~|)$"), ["n", "~", ""])
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^-?(?:0|[1-9][0-9]*)$"), list("-0123456789"))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?$"),
    list("-0123456789"),
)


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if not re.fullmatch(r"-?(?:0|[1-9][0-9]*)", text):
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a decimal integer", node.start_mark)
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of {len(text.lstrip('-'))} digits is too large", node.start_mark
        )
    return int(text)


def _construct_float(loader: _StrictLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node))
    try:
        value = float(text)
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a number", node.start_mark) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a finite number", node.start_mark)
    return value


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # merge keys (<<) are YAML 1.1; refused below like any non-scalar key
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"keys must be strings, got {key!r}", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (JSON and the API server allow each key once)", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _refuse_tag(loader: _StrictLoader, node: yaml.Node) -> None:
    raise yaml.constructor.ConstructorError(None, None, f"{node.tag} has no JSON value", node.start_mark)


# Tags JSON has no value for: timestamps, binary, sets, ordered maps, pairs.
for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    _StrictLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


def load_all(text: str) -> list[Any]:
    """The documents of `text`, as JSON-compatible Python values. Raises StrictYamlError naming the place."""
    if len(text) > MAX_DOCUMENT_CHARS:
        raise StrictYamlError(f"the manifest is {len(text)} characters; at most {MAX_DOCUMENT_CHARS} are read")
    try:
        _check_shape(text)
        return list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        raise StrictYamlError(_describe(exc)) from None


def _check_shape(text: str) -> None:
    """Depth and expanded size from the event stream alone (the parser does not recurse, and aliases are
    events, not copies), so a hostile document is refused before it costs memory or a RecursionError."""
    anchored: dict[str, int] = {}  # anchor → values under it, aliases expanded
    open_sizes: list[list[Any]] = []  # per open collection: [values so far, its anchor]
    total = 0
    for event in _events(text):
        if isinstance(event, yaml.AliasEvent):
            size = anchored.get(event.anchor or "")
            if size is None:
                continue  # an undefined alias: the composer reports it with its place
            _add(open_sizes, size)
            total += size
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                anchored[event.anchor] = 1
            _add(open_sizes, 1)
            total += 1
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(open_sizes) >= MAX_DEPTH:
                raise StrictYamlError(f"{_where(event)}nesting deeper than {MAX_DEPTH} levels")
            open_sizes.append([1, event.anchor])
            total += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            size, anchor = open_sizes.pop()
            if anchor:
                anchored[anchor] = size
            _add(open_sizes, size)
        elif isinstance(event, yaml.DocumentEndEvent):
            anchored.clear()
        if total > MAX_EXPANDED_NODES:
            raise StrictYamlError(
                f"{_where(event)}the document holds more than {MAX_EXPANDED_NODES} values with its aliases expanded"
            )


def _events(text: str) -> Iterator[yaml.Event]:
    yield from yaml.parse(text, Loader=_StrictLoader)


def _add(open_sizes: list[list[Any]], size: int) -> None:
    if open_sizes:
        open_sizes[-1][0] += size


def _where(event: yaml.Event) -> str:
    mark = event.start_mark
    return f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _describe(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    kind = "value" if isinstance(exc, yaml.constructor.ConstructorError) else "syntax"
    return f"YAML {kind} error{where}: {problem}"

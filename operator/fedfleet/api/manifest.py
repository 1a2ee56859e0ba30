"""Reading a FederatedJob or ModelRollout manifest from YAML, with one-line errors that name the field and the rule.

Messages read `spec.path.to.field: rule (got value)`, prefixed with the manifest's source.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from fedfleet.api import strict_yaml
from fedfleet.api.federatedjob import KIND, FederatedJob, SpecError
from fedfleet.api.modelrollout import KIND as ROLLOUT_KIND
from fedfleet.api.modelrollout import ModelRollout
from fedfleet.api.strict_yaml import StrictYamlError

Resource = TypeVar("Resource", FederatedJob, ModelRollout)

_MAX_SHOWN = 60  # characters of an offending value quoted in a message; the message stays one line


class ManifestError(Exception):
    """The manifest can never be run as written. The message is one line meant for the user."""


def load_job(path: str | Path) -> FederatedJob:
    return _parse(_read(path), str(path), FederatedJob, KIND)


def parse_job(text: str, source: str = "<manifest>") -> FederatedJob:
    return _parse(text, source, FederatedJob, KIND)


def job_from_object(obj: dict[str, Any], source: str = "<manifest>") -> FederatedJob:
    return _from_object(obj, source, FederatedJob)


def load_rollout(path: str | Path) -> ModelRollout:
    return _parse(_read(path), str(path), ModelRollout, ROLLOUT_KIND)


def parse_rollout(text: str, source: str = "<manifest>") -> ModelRollout:
    return _parse(text, source, ModelRollout, ROLLOUT_KIND)


def rollout_from_object(obj: dict[str, Any], source: str = "<manifest>") -> ModelRollout:
    return _from_object(obj, source, ModelRollout)


def _read(path: str | Path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def _parse(text: str, source: str, root: type[Resource], kind: str) -> Resource:
    try:
        docs = [d for d in strict_yaml.load_all(text) if d is not None]
    except StrictYamlError as exc:
        raise ManifestError(f"{source}: {exc}") from None
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]
    if not found:
        kinds = [d.get("kind") for d in docs if isinstance(d, dict)]
        if kinds:
            # The likeliest mistake is a misspelt or wrong kind: name the field, not just the count.
            raise ManifestError(f"{source}: kind: must be {kind} (got {_shown(kinds[0])})")
        raise ManifestError(f"{source}: expected one document of kind {kind}, found none")
    if len(found) > 1:
        raise ManifestError(f"{source}: expected exactly one document of kind {kind}, found {len(found)}")
    return _from_object(found[0], source, root)


def _from_object(obj: dict[str, Any], source: str, root: type[Resource]) -> Resource:
    try:
        # As the API server reads it: JSON values, strictly typed (`rounds: true` or `rounds: 10.0` is not an
        # integer), wire names only (camelCase) — a snake_case key that the local runtime accepted would be
        # pruned by the cluster, and the two would run different jobs.
        wire = json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{source}: not JSON-compatible: {exc}") from None
    try:
        return root.model_validate_json(wire, strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {describe_validation_error(exc, root)}") from None


def describe_validation_error(exc: ValidationError, root: type[BaseModel] = FederatedJob) -> str:
    """The first problem as `field.path: rule (got value)`; the count of any others is appended. `root` is the
    model the error's place starts from, for the "did you mean" hint."""
    errors = exc.errors(include_url=False)
    text = _describe(errors[0], root)
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _describe(error: ErrorDetails, root: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    ctx = error.get("ctx") or {}
    kind = error["type"]
    ctx_error = ctx.get("error")
    if isinstance(ctx_error, SpecError):
        # A cross-field rule: name the field it is about, below the model that checked it.
        field = f"{loc}.{ctx_error.field}" if loc else ctx_error.field
        got = _lookup(error["input"], ctx_error.field.split("."))
        return f"{field}: {ctx_error.rule}" + (f" (got {_shown(got)})" if got is not _ABSENT else "")
    if kind == "extra_forbidden":
        hint = _did_you_mean(error["loc"], root)
        return f"{loc}: unknown field{hint}"
    if kind == "missing":
        return f"{loc}: required field is missing"
    if kind in _BOUND_RULES:
        ctx_key, words = _BOUND_RULES[kind]
        rule = f"{words} {_number(ctx[ctx_key])}"
    elif kind in ("enum", "literal_error"):
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        if len(allowed) == 1:
            rule = f"must be {allowed[0]}"
        else:
            rule = f"must be one of {', '.join(allowed)}" if allowed else _lower_first(error["msg"])
    else:
        rule = _lower_first(error["msg"])
    return f"{loc}: {rule} (got {_shown(error['input'])})"


# pydantic's bound errors, as (the ctx key holding the bound, the rule in words).
_BOUND_RULES = {
    "greater_than": ("gt", "must be greater than"),
    "greater_than_equal": ("ge", "must be at least"),
    "less_than": ("lt", "must be less than"),
    "less_than_equal": ("le", "must be at most"),
}
_ABSENT = object()  # a field the manifest does not set (its value may legitimately be None)


def _lookup(obj: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _ABSENT
        obj = obj[key]
    return obj


def _did_you_mean(loc: Sequence[int | str], root: type[BaseModel]) -> str:
    """` (did you mean X?)` when the unknown key is close to a field of the model at that place."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an element of a list: the model stays the list's item model
        fields = model.model_fields.items() if model is not None else ()
        annotation = next((f.annotation for name, f in fields if part in (f.alias, name)), None)
        model = _section_model(annotation)
    if model is None:
        return ""
    wire_names = {name: f.alias or name for name, f in model.model_fields.items()}
    if loc[-1] in wire_names:  # the Python (snake_case) name of a field
        return f" (did you mean {wire_names[str(loc[-1])]}?)"
    known = list(wire_names.values())
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or the item of a tuple or list of models, or X of `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if arg is not type(None) and arg is not Ellipsis:
            found = _section_model(arg)
            if found is not None:
                return found
    return None


def _number(bound: Any) -> str:
    """A bound as written in the model: `0`, not pydantic's `0.0` for a float field's `gt=0`."""
    if isinstance(bound, float) and bound.is_integer() and abs(bound) < 1e15:
        return str(int(bound))
    return str(bound)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _lower_first(msg: str) -> str:
    return msg[:1].lower() + msg[1:]

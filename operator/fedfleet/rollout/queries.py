"""Filling a metric's query template with the rollout's names: `{{version}}`, `{{baseline}}`, `{{fleet}}`,
`{{rollout}}`.

The values land inside PromQL string literals (`version="{{version}}"`), so each is escaped as a PromQL
string (backslash and both quote kinds): a rollout or fleet name cannot change the query's shape. A
placeholder the template uses but the rollout cannot fill (no baseline yet) or does not know is an error
naming it, so a typo in the spec shows up at once instead of as a query that silently matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDERS = ("version", "baseline", "fleet", "rollout")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class QueryTemplateError(ValueError):
    pass


def placeholders_in(template: str) -> set[str]:
    return {match.group(1) for match in _PLACEHOLDER.finditer(template)}


def check_template(template: str) -> None:
    """Raise when the template names a placeholder that no rollout can fill."""
    unknown = sorted(placeholders_in(template) - set(PLACEHOLDERS))
    if unknown:
        known = ", ".join("{{" + name + "}}" for name in PLACEHOLDERS)
        raise QueryTemplateError(f"unknown placeholder {{{{{unknown[0]}}}}}; the known ones are {known}")


def render(template: str, values: Mapping[str, str | None]) -> str:
    check_template(template)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            raise QueryTemplateError(f"the query uses {{{{{name}}}}} but the rollout has no {name} yet")
        return _escape(value)

    return _PLACEHOLDER.sub(fill, template)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'").replace("\n", "\\n")

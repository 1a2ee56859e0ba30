"""The one error the pure rollout logic raises for bad input: it names the field and the rule it breaks."""

from __future__ import annotations


class InvalidField(ValueError):
    """`field` is a path a user can find (`selector.matchExpressions[0].values`); `rule` says what to fix."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def shown(value: object, limit: int = 24) -> str:
    """A value quoted in a message, cut to `limit` characters (inputs may be huge, even ints too long to print)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"{type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."

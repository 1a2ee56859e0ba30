"""Durations as a ModelRollout writes them: Go's notation (`500ms`, `30s`, `5m`, `1h30m`), as in Argo Rollouts.

One pattern serves both sides: the models check it (in `parse_duration`) and the CRD's schema carries it, so
the API server refuses what `parse_duration` would refuse. The upper bound is checked on both sides too: by
`parse_duration` here, and by a CEL rule on each duration field (CEL's `duration()` reads Go's notation), both
written from `MAX_DURATION_SECONDS`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

#: One or more `<number><unit>` terms, units h, m, s and ms; no sign, no spaces. Go and CEL accept more
#: (ns, us, signs); a manifest has no use for them, and the narrower notation is what both sides agree on.
DURATION_PATTERN = r"^([0-9]{1,9}(\.[0-9]{1,9})?(h|ms|m|s))+$"
#: Characters of a duration: far more than any sensible one needs, and it bounds the CEL rule's cost.
MAX_DURATION_CHARS = 32
#: Longest duration accepted anywhere in a rollout: a week. Longer pauses are `pause: {}` (until promoted).
MAX_DURATION_SECONDS = 7 * 24 * 3600
#: Shortest interval between two measurements of a metric: a tighter loop would only load Prometheus.
MIN_INTERVAL_SECONDS = 1

_TERM = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,9})?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_WRITTEN = "a duration like 500ms, 30s, 5m or 1h30m"


class DurationError(ValueError):
    """The text is not a duration this API accepts. The message says what is."""


def parse_duration(text: str) -> float:
    """Seconds in `text` (`1h30m` → 5400.0). Raises DurationError for anything the CRD's pattern refuses or
    for more than MAX_DURATION_SECONDS."""
    if len(text) > MAX_DURATION_CHARS or not re.fullmatch(DURATION_PATTERN, text):
        raise DurationError(f"must be {_WRITTEN}")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _TERM.findall(text))
    if seconds > MAX_DURATION_SECONDS:
        raise DurationError(f"must be at most {_go(MAX_DURATION_SECONDS)}")
    return seconds


def _go(seconds: int) -> str:
    """Whole seconds as CEL's `duration()` reads them: `168h`, `1s`."""
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds}s"


def _checked(minimum: int) -> AfterValidator:
    def check(text: str) -> str:
        try:
            seconds = parse_duration(text)
        except DurationError as exc:
            raise PydanticCustomError("duration", str(exc)) from None
        if seconds < minimum:
            raise PydanticCustomError("duration", f"must be at least {_go(minimum)}")
        return text

    return AfterValidator(check)


def _schema(minimum: int) -> Any:
    """The field's CRD node: the pattern, and bound checks with the limits `_checked` applies."""
    rules: list[dict[str, str]] = []
    if minimum > 0:
        rules.append(
            {"rule": f"duration(self) >= duration('{_go(minimum)}')", "message": f"must be at least {_go(minimum)}"}
        )
    maximum = _go(MAX_DURATION_SECONDS)
    rules.append({"rule": f"duration(self) <= duration('{maximum}')", "message": f"must be at most {maximum}"})
    # The pattern goes into the schema only: the models check it in parse_duration, which says what a duration
    # is rather than quoting a regular expression.
    extra: dict[str, Any] = {"pattern": DURATION_PATTERN, "x-kubernetes-validations": rules}
    return Field(max_length=MAX_DURATION_CHARS, json_schema_extra=extra)


#: A duration field, e.g. `pause.duration`. Zero is allowed (a pause that ends at once).
Duration = Annotated[str, _schema(0), _checked(0)]
#: The time between two measurements of a metric: at least MIN_INTERVAL_SECONDS.
Interval = Annotated[str, _schema(MIN_INTERVAL_SECONDS), _checked(MIN_INTERVAL_SECONDS)]

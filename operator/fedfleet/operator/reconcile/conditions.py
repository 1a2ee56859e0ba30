"""Condition bookkeeping after metav1.Condition: lastTransitionTime moves only when the status changes, every
condition carries the generation it was computed from, and terminal conditions never leave True."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from fedfleet.api.status import TERMINAL_CONDITIONS, Condition, ConditionType

#: The order conditions are listed in, so the status reads the same way every time.
ORDER = tuple(ConditionType)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def set_condition(
    conditions: Sequence[Condition],
    kind: ConditionType,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int,
) -> list[Condition]:
    """The conditions with `kind` set. A terminal condition that is True stays exactly as it is."""
    value = "True" if status else "False"
    existing = next((c for c in conditions if c.type == kind), None)
    if existing is not None and kind in TERMINAL_CONDITIONS and existing.status == "True":
        return list(conditions)
    since = existing.last_transition_time if existing is not None and existing.status == value else rfc3339(now)
    updated = Condition(
        type=kind,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != kind]
    return sorted([*others, updated], key=_position)


def is_true(conditions: Sequence[Condition], kind: ConditionType) -> bool:
    return any(c.type == kind and c.status == "True" for c in conditions)


def _position(condition: Condition) -> int:
    try:
        return ORDER.index(ConditionType(condition.type))
    except ValueError:
        return len(ORDER)  # a condition someone else added: kept, listed last

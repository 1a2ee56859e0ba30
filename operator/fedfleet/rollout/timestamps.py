"""Moments as the rollout's status holds them: RFC 3339 in UTC, to the second (metav1.Time's precision).

The step machine works in epoch seconds and takes whole seconds only (`whole_seconds`), so a state survives
the round trip through the status unchanged, and a re-read status decides exactly as the state it came from.
"""

from __future__ import annotations

import datetime as dt
import math

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def whole_seconds(now: float) -> float:
    """`now` rounded up: a moment recorded this way is never earlier than the real one, so a timed pause
    measured from it never ends early."""
    return float(math.ceil(now))


def rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(math.floor(epoch), dt.UTC).strftime(_FORMAT)


def epoch(text: str | None) -> float | None:
    """The moment `text` names, or None when it is absent or not RFC 3339 in UTC to the second."""
    if text is None:
        return None
    try:
        return dt.datetime.strptime(text, _FORMAT).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None

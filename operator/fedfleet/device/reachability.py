"""Whether the aggregator is gone, as opposed to slow or restarting: the device's one real give-up condition.

A device gives up only when the aggregator has answered nothing at all for `give_up_after` seconds in a row.
The silence starts with the first unanswered try after the last answer, not at the last answer: time the
device spent training or sitting out a round, when it sent nothing, is not silence of the aggregator. Any
answer ends a silence, a refusal included (the aggregator is there, it said no, and said why); a try that
ran out of time (DEADLINE_EXCEEDED) or found no server (UNAVAILABLE) without a reason did not get one.

How long one try waits grows instead: a try that ran out of time is followed by one that waits twice as long
(`TryTimeouts`), so an aggregator that answers slowly — a loaded machine, a slow link — is waited for rather
than given up on, and never for longer than the patience that is left.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

#: Codes of a try that got no answer from the aggregator (unless the aggregator sent them, with a reason).
UNANSWERED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class Reachability:
    """The aggregator's silence as one device sees it, on an injectable monotonic clock."""

    def __init__(self, give_up_after: float, clock: Callable[[], float]) -> None:
        if not give_up_after > 0:
            raise ValueError(f"give_up_after must be greater than 0 seconds, got {give_up_after}")
        self.give_up_after = give_up_after
        self._clock = clock
        self._silent_since: float | None = None  # when the first unanswered try since the last answer started

    def answered(self) -> None:
        self._silent_since = None

    def unanswered(self, try_started: float) -> None:
        if self._silent_since is None or try_started < self._silent_since:
            self._silent_since = try_started

    def silent_for(self) -> float:
        """Seconds without any answer, counted from the first try that got none; 0 when the last try was answered."""
        if self._silent_since is None:
            return 0.0
        return max(0.0, self._clock() - self._silent_since)

    def patience_left(self) -> float:
        return max(0.0, self.give_up_after - self.silent_for())

    def exhausted(self) -> bool:
        return self.silent_for() >= self.give_up_after


class TryTimeouts:
    """The deadline of each try of one call: `expected` (what the server may take by design, e.g. a long-poll's
    wait) plus a margin that starts at `margin` and doubles after each try that ran out of time."""

    def __init__(self, expected: float, margin: float) -> None:
        if not (expected >= 0 and margin > 0):
            raise ValueError(f"a try needs expected >= 0 and margin > 0 seconds, got {expected} and {margin}")
        self.expected = expected
        self.margin = margin

    def next(self) -> float:
        return self.expected + self.margin

    def ran_out(self) -> None:
        self.margin *= 2

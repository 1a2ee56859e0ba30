"""Which devices were heard from lately, and what they run: the source of `fedfleet_gateway_devices` and of the
device counts in a fleet summary.

A device counts while its last check-in is younger than the window (the check-in interval the gateway tells
devices, with slack for their timers). Memory is bounded: at most `max_devices` devices are remembered, the
longest silent forgotten first, so a flood of made-up device ids costs a bounded table, not the process.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Seen:
    at: float
    version: str  # a metric label: a digest the fleet's view names, "none" or "other"
    role: str


class Presence:
    def __init__(self, window_seconds: float, max_devices: int, clock: Callable[[], float]) -> None:
        if window_seconds <= 0 or max_devices < 1:
            raise ValueError("window_seconds must be > 0 and max_devices >= 1")
        self._window = window_seconds
        self._max = max_devices
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], Seen] = OrderedDict()  # oldest first

    def seen(self, fleet: str, device_id: str, version: str, role: str) -> None:
        key = (fleet, device_id)
        self._seen[key] = Seen(self._clock(), version, role)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def counts(self, fleet: str | None = None) -> Counter[tuple[str, str, str]]:
        """Devices heard from within the window by (fleet, version, role); forgets the older ones."""
        self._expire()
        return Counter((f, s.version, s.role) for (f, _), s in self._seen.items() if fleet is None or f == fleet)

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self) -> None:
        horizon = self._clock() - self._window
        while self._seen:
            key, oldest = next(iter(self._seen.items()))
            if oldest.at >= horizon:
                return
            del self._seen[key]

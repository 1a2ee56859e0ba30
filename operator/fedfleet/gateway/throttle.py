"""At most one accepted health report per device and version per interval: one device repeating its report a
thousand times must not outweigh a thousand devices in the accuracy histogram the rollout gate reads.

Memory is bounded like presence: the `max_devices` devices that reported most recently are remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class ReportThrottle:
    def __init__(self, min_interval_seconds: float, max_devices: int, clock: Callable[[], float]) -> None:
        self._interval = min_interval_seconds
        self._max = max_devices
        self._clock = clock
        self._last: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def wait_left(self, fleet: str, device_id: str, version: str) -> float:
        """Seconds until this device may report on `version` again; 0 when it may now."""
        last = self._last.get((fleet, device_id))
        if last is None or last[0] != version:
            return 0.0
        return max(0.0, last[1] + self._interval - self._clock())

    def accepted(self, fleet: str, device_id: str, version: str) -> None:
        key = (fleet, device_id)
        self._last[key] = (version, self._clock())
        self._last.move_to_end(key)
        while len(self._last) > self._max:
            self._last.popitem(last=False)

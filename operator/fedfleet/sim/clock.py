"""Clocks for simulated devices (fedfleet.device.clock.Clock): simulated seconds that pass faster than real
ones, and a clock that only moves when a test moves it.

`ScaledClock` is what a simulated fleet runs on beside a real gateway: one simulated second is `time_scale`
wall seconds, like `fedfleet device-sim`'s time scale. `ManualClock` is for tests: sleepers wake exactly when
`advance` carries the time past their deadline, in deadline order, so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time


class ScaledClock:
    """Simulated seconds since the clock was made; each lasts `time_scale` wall seconds."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale}")
        self.time_scale = time_scale
        self._origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._origin) / self.time_scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) * self.time_scale)


class ManualClock:
    """Time stands still until `advance`; `sleep(s)` returns once the clock has been advanced past now + s."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # ties wake in the order they went to sleep

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if not seconds > 0:
            await asyncio.sleep(0)  # still a point where other tasks run, as a real sleep(0) is
            return
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), wake))
        await wake

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper whose time has come, each at its own time."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"advance needs a finite number of seconds >= 0, got {seconds}")
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, wake = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not wake.done():
                wake.set_result(None)
                # Let the woken task run (and perhaps go to sleep again within the window) before moving on.
                for _ in range(3):
                    await asyncio.sleep(0)
        self._now = target

"""The time a device waits and measures by: real on a device, injected in tests and simulations.

A device's backoff, its download time budget and the inference latency it reports all read one `Clock`. The
device SDK uses `WallClock`; a simulated fleet passes its own clock (fedfleet.sim.clock), so a test never waits
out a backoff in real time and never depends on how fast an idle CPU would be.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""


class WallClock:
    """The machine's monotonic clock and asyncio's sleep."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

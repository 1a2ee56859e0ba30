"""Waiting until a simulated fleet in this event loop has done everything it can do at the current simulated
time: every device task waits for the simulated clock, an assignment or a download slot that nothing pending
will give it.

The embedded rollout measures, decides and counts devices between such moments, so what it sees never
depends on how fast the machine ran the devices: a weight raised at simulated second 40 is counted at second
40 after every device that heard of it has downloaded, verified, activated and reported, however long that
took in wall time.

asyncio has no public "idle" signal. The event loop's queue of ready callbacks is it: when the task asking
finds that queue empty, no other task can run until a future is resolved from outside the loop's ready work
(the clock advanced, a timer or a thread), which is exactly the fleet having settled. The loops of CPython
and of its subclasses keep that queue as `_ready`; where a loop has none, a fixed number of turns stands in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sized

#: Turns given to the loop when it cannot be asked whether anything is ready.
FALLBACK_TURNS = 2_000
#: Consecutive turns with nothing ready that count as settled (one suffices on CPython's loop; the second
#: turn is slack against a callback handed in from another thread between the two).
QUIET_TURNS = 2
#: A fleet that never settles (a device task that spins) is a bug: stop waiting after this many turns.
MAX_TURNS = 5_000_000


class NeverSettled(RuntimeError):
    """The event loop always had work ready: some task never waits."""


async def settle(max_turns: int = MAX_TURNS) -> int:
    """Yield to the event loop until no other callback is ready; returns the turns it took."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    if not isinstance(ready, Sized):
        for _ in range(FALLBACK_TURNS):
            await asyncio.sleep(0)
        return FALLBACK_TURNS
    quiet = 0
    for turn in range(1, max_turns + 1):
        await asyncio.sleep(0)
        quiet = quiet + 1 if len(ready) == 0 else 0
        if quiet >= QUIET_TURNS:
            return turn
    raise NeverSettled(f"the event loop still had work ready after {max_turns} turns")

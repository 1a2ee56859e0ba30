"""The simulated clocks: a manual clock wakes each sleeper exactly when time is carried past its deadline, in
deadline order; a scaled clock's simulated seconds are a fixed share of wall seconds."""

from __future__ import annotations

import asyncio

import pytest

from fedfleet.sim.clock import ManualClock, ScaledClock
from rollout_support import run_async


@run_async
async def test_sleepers_wake_in_deadline_order_at_their_own_time() -> None:
    clock = ManualClock(start=100.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 30.0), ("a", 10.0), ("b", 20.0))]
    await asyncio.sleep(0)
    assert clock.sleepers == 3
    await clock.advance(15.0)
    assert woke == [("a", 110.0)] and clock.now() == 115.0
    await clock.advance(100.0)
    await asyncio.gather(*tasks)
    assert woke == [("a", 110.0), ("b", 120.0), ("c", 130.0)]
    assert clock.now() == 215.0


@run_async
async def test_a_sleeper_that_sleeps_again_within_the_advance_wakes_again() -> None:
    clock = ManualClock()
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(3):
            await clock.sleep(1.0)
            ticks.append(clock.now())

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await clock.advance(10.0)
    await task
    assert ticks == [1.0, 2.0, 3.0]


@run_async
async def test_zero_and_negative_sleeps_return_at_once() -> None:
    clock = ManualClock()
    await asyncio.wait_for(clock.sleep(0.0), 5)
    await asyncio.wait_for(clock.sleep(-3.0), 5)
    with pytest.raises(ValueError, match="finite number of seconds"):
        await clock.advance(float("nan"))


def test_a_scaled_clock_counts_simulated_seconds() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        ScaledClock(0.0)
    clock = ScaledClock(time_scale=0.001)  # a simulated second lasts a millisecond
    before = clock.now()
    asyncio.run(clock.sleep(50.0))  # 50 ms of wall time
    assert clock.now() - before >= 50.0

"""Waiting for a simulated fleet to settle: `settle` returns only once every other task waits for something
that only the outside (the simulated clock, an event) can give, and says so when a task never waits."""

from __future__ import annotations

import asyncio

import pytest

from fedfleet.runtime.settle import NeverSettled, settle
from fedfleet.sim.clock import ManualClock
from rollout_support import run_async


@run_async
async def test_settle_returns_once_every_task_waits_for_the_outside() -> None:
    finished: list[int] = []

    async def work(turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        finished.append(turns)

    async def hand_over(queue: asyncio.Queue[int]) -> None:
        finished.append(await queue.get())

    queue: asyncio.Queue[int] = asyncio.Queue()
    tasks = [asyncio.create_task(work(n)) for n in (1, 50, 3000)]
    tasks.append(asyncio.create_task(hand_over(queue)))
    queue.put_nowait(7)
    never = asyncio.Event()
    waiting = asyncio.create_task(never.wait())

    await settle()

    assert sorted(finished) == [1, 7, 50, 3000]  # long chains of turns, and work handed from task to task
    assert all(task.done() for task in tasks)
    assert not waiting.done()  # waits for an event nobody sets: that does not hold settling up
    waiting.cancel()


@run_async
async def test_tasks_woken_by_the_simulated_clock_finish_their_work_before_settle_returns() -> None:
    clock = ManualClock()
    woken: list[float] = []
    worked: list[float] = []

    async def device(period: float) -> None:
        while True:
            await clock.sleep(period)
            woken.append(period)
            for _ in range(1000):  # work after each wake-up, far longer than the clock waits for it
                await asyncio.sleep(0)
            worked.append(period)

    tasks = [asyncio.create_task(device(p)) for p in (3.0, 5.0)]
    await settle()
    assert woken == []  # asleep on the clock: nothing to do
    await clock.advance(4.0)
    await settle()
    assert woken == worked == [3.0]
    await clock.advance(4.0)
    await settle()
    assert sorted(worked) == sorted(woken) and 5.0 in worked
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@run_async
async def test_a_task_that_never_waits_is_named_a_bug_instead_of_a_hang() -> None:
    async def spin() -> None:
        while True:
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    with pytest.raises(NeverSettled, match="after 500 turns"):
        await settle(max_turns=500)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

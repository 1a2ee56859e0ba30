"""Open watches: a view change reaches exactly the devices whose assignment changed, newest first and once;
streams are capped per device and in total; shutdown ends them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fedfleet.gateway.core import GatewaySettings
from fedfleet.gateway.errors import GatewayError
from fedfleet.gateway.watchers import Watch, WatchClosed
from fedfleet.proto.refusals import Refusal
from gateway_support import FLEET, bench, canary_and_stable_devices, view_json


def versions(watch: Watch) -> str | None:
    pending = watch.pending
    return pending.assignment.version if pending is not None else None


def test_a_change_is_pushed_only_to_the_devices_it_changes(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = bench(tmp_path)
        b.put(view_json(b.d1), b.v1, b.v2)
        canary, stable = canary_and_stable_devices(10.0, count=3)
        watches = {d: b.gateway.open_watch(FLEET, d, {}) for d in canary + stable}
        for watch in watches.values():
            first = await watch.next(0)
            assert first is not None and first.assignment.version == b.d1, "the current assignment comes at once"
        quiet = [None] * len(watches)
        assert [await w.next(0) for w in watches.values()] == quiet, "then nothing until something changes"

        b.put(view_json(b.d1, b.d2, weight=10.0, generation=2), b.v2)
        for device in canary:
            pushed = await watches[device].next(0)
            assert pushed is not None and pushed.assignment.version == b.d2 and pushed.generation == 2
            assert pushed.release is not None and pushed.release.digest == b.d2
        for device in stable:
            # Their rollout and role changed (outside -> stable in 'mnist'), their version did not: they hear
            # about the new role once, and the version stays.
            pushed = await watches[device].next(0)
            assert pushed is not None and pushed.assignment.version == b.d1

        b.put(view_json(b.d1, b.d2, weight=10.0, generation=3), b.v2)  # same cohorts, new generation
        assert [await w.next(0) for w in watches.values()] == quiet, "an unchanged assignment is not pushed"

    asyncio.run(scenario())


def test_a_slow_reader_gets_the_newest_assignment_once_and_nothing_for_a_change_undone(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = bench(tmp_path)
        canary, _ = canary_and_stable_devices(10.0, count=1)
        b.put(view_json(b.d1, b.d2, weight=0.0, generation=1), b.v1, b.v2)
        watch = b.gateway.open_watch(FLEET, canary[0], {})
        assert versions(watch) == b.d1
        await watch.next(0)
        b.put(view_json(b.d1, b.d2, weight=10.0, generation=2))
        b.put(view_json(b.d1, b.d2, weight=20.0, generation=3))
        newest = await watch.next(0)
        assert newest is not None and (newest.assignment.version, newest.generation) == (b.d2, 2), (
            "weight 10 -> 20 does not change this device: the pending slot keeps the first change"
        )
        b.put(view_json(b.d1, b.d2, weight=0.0, generation=4))  # aborted: back on stable
        b.put(view_json(b.d1, b.d2, weight=10.0, generation=5))  # and resumed before the device read it
        assert await watch.next(0) is None, "changed and changed back: the device already runs it"

    asyncio.run(scenario())


def test_streams_are_capped_per_device_and_in_total(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = bench(tmp_path, GatewaySettings(max_watch_streams=3, max_watch_streams_per_device=2))
        b.put(view_json(b.d1), b.v1)
        first = b.gateway.open_watch(FLEET, "dev-1", {})
        b.gateway.open_watch(FLEET, "dev-1", {})
        with pytest.raises(GatewayError) as info:
            b.gateway.open_watch(FLEET, "dev-1", {})
        assert info.value.reason == Refusal.TOO_MANY_WATCHES
        b.gateway.open_watch(FLEET, "dev-2", {})
        with pytest.raises(GatewayError) as info:
            b.gateway.open_watch(FLEET, "dev-3", {})
        assert info.value.reason == Refusal.TOO_MANY_WATCHES
        b.gateway.close_watch(first)
        b.gateway.close_watch(first)  # closing twice counts once
        b.gateway.open_watch(FLEET, "dev-3", {})
        assert len(b.gateway.watchers) == 3
        assert b.sample("fedfleet_gateway_watch_streams") == 3
        assert b.sample("fedfleet_gateway_refusals_total", method="WatchAssignment", reason="too_many_watches") == 2

    asyncio.run(scenario())


def test_shutdown_ends_every_stream_and_a_subscriber_sees_changes(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = bench(tmp_path)
        canary, _ = canary_and_stable_devices(50.0, count=1)
        b.put(view_json(b.d1), b.v1)
        seen: list[str | None] = []
        both = asyncio.Event()

        async def subscriber() -> None:
            async for answer in b.gateway.subscribe(FLEET, canary[0], {}):
                seen.append(answer.assignment.version)
                if len(seen) == 1:
                    b.put(view_json(b.d1, b.d2, weight=50.0, generation=2), b.v2)
                else:
                    both.set()

        task = asyncio.create_task(subscriber())
        await asyncio.wait_for(both.wait(), 10)
        waiting = b.gateway.open_watch(FLEET, "dev-x", {})
        await waiting.next(0)
        b.gateway.close()
        await asyncio.wait_for(task, 10)  # the subscription ends rather than hanging
        with pytest.raises(WatchClosed):
            await waiting.next(None)
        assert seen == [b.d1, b.d2]
        assert len(b.gateway.watchers) == 0 and b.sample("fedfleet_gateway_watch_streams") == 0

    asyncio.run(scenario())

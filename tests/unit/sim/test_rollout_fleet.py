"""The simulated rollout fleet against a real in-process fleet gateway: devices run what the rollout assigns them
(counted from the devices themselves, and equal to what the pure assignment function says), a weight that
grows only adds devices, an abort brings everyone back without a download, devices away during the abort come
back on stable, a tampered candidate is refused by every device that was assigned it, silent devices never
report, and one decoded model serves every device that runs it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from fedfleet.data.datasets import Dataset
from fedfleet.rollout.assignment import Role, assign
from fedfleet.runtime.settle import settle
from fedfleet.security.signing import SigningKey, TrustedKeys
from fedfleet.sim.clock import ManualClock
from fedfleet.sim.rollout_devices import OfflineWindows, RolloutFleetSpec
from fedfleet.sim.rollout_fleet import RolloutFleet
from fedfleet.sim.rollout_links import in_process_links
from rollout_support import FleetHarness, artifact_bytes, run_async

#: A safety net for waits, never what a test measures: each wait ends when the fleet has converged.
PATIENCE = 120.0


@pytest.fixture(scope="module")
def pool() -> Dataset:
    """Held-out examples for the devices (random images: the fleet's behaviour, not the model's, is tested)."""
    rng = np.random.default_rng(0)
    x = rng.random((400, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=400).astype(np.int64)
    return Dataset("random", x, y, 10, (1, 28, 28))


class Scenario:
    def __init__(self, root: Path, pool: Dataset, spec: RolloutFleetSpec, join_within_seconds: float = 0.0) -> None:
        self.key = SigningKey.generate()
        self.clock = ManualClock()
        self.harness = FleetHarness.in_process(root, self.key, clock=self.clock.now)
        self.stable = self.harness.publish(artifact_bytes(seed=1))
        self.candidate = self.harness.publish(artifact_bytes(seed=2))

        links = in_process_links(self.harness.gateway, "default")
        trusted = TrustedKeys([self.key.public()])
        self.fleet = RolloutFleet(spec, pool, links, trusted, clock=self.clock, join_within_seconds=join_within_seconds)

    def expected(self, *, online: Callable[[str], bool] = lambda device_id: True) -> Counter[str | None]:
        """What each device should run under the gateway's current view, from the pure assignment function."""
        snapshot = self.harness.gateway.states.get("default")
        assert snapshot is not None
        return Counter(
            assign(snapshot.view, d.device_id, d.attributes).version for d in self.fleet.devices if online(d.device_id)
        )

    def canary_ids(self) -> set[str]:
        snapshot = self.harness.gateway.states.get("default")
        assert snapshot is not None
        return {
            d.device_id
            for d in self.fleet.devices
            if assign(snapshot.view, d.device_id, d.attributes).role == Role.CANARY
        }

    async def converged(self, what: str, expected: Counter[str | None] | None = None) -> None:
        """Wait until the devices run what they are assigned, moving the simulated clock a little per turn so that
        backoffs end (the periodic check-ins never matter here: they are a minute apart)."""

        async def poll() -> None:
            while self.fleet.running_versions() != (expected or self.expected()):
                await asyncio.sleep(0.002)
                await self.clock.advance(0.05)

        try:
            await asyncio.wait_for(poll(), PATIENCE)
        except TimeoutError:
            raise AssertionError(
                f"never converged: {what}: {dict(self.fleet.running_versions())} != {dict(self.expected())}"
            ) from None


@pytest.fixture
def scenario_factory(tmp_path: Path, pool: Dataset) -> Iterator[Callable[[RolloutFleetSpec], Scenario]]:
    yield lambda spec: Scenario(tmp_path, pool, spec)


@run_async
async def test_devices_follow_the_weight_and_an_abort_brings_them_back_without_downloads(
    scenario_factory: Callable[[RolloutFleetSpec], Scenario],
) -> None:
    s = scenario_factory(RolloutFleetSpec(devices=200, seed=11))
    s.harness.set_view(stable=s.stable)
    stop = asyncio.Event()
    running = asyncio.create_task(s.fleet.run(stop))
    try:
        await s.converged("everyone on stable", Counter({s.stable: 200}))

        seen_on_candidate: set[str] = set()
        for weight in (5.0, 25.0, 60.0):
            s.harness.set_view(stable=s.stable, candidate=s.candidate, weight=weight)
            await s.converged(f"weight {weight}")
            on_candidate = {i for i, u in s.fleet.updaters.items() if u.running_version == s.candidate}
            assert on_candidate == s.canary_ids()
            assert seen_on_candidate <= on_candidate  # raising the weight only adds devices
            seen_on_candidate = on_candidate
            share = s.fleet.share_running(s.candidate)
            assert abs(share - weight / 100) < 0.1  # 200 devices: the hash buckets are close to the weight
        downloads = s.fleet.totals().stats.downloads
        assert downloads == 200 + len(seen_on_candidate)  # each device fetched each version it ran once

        s.harness.set_view(stable=s.stable, candidate=s.candidate, weight=0.0, revision=1)  # aborted
        await s.converged("everyone back on stable", Counter({s.stable: 200}))
        totals = s.fleet.totals().stats
        assert totals.downloads == downloads  # the rollback was a swap on every device
        assert totals.rollbacks == len(seen_on_candidate)
        assert s.fleet.shared.builds == 2  # one decoded model per version for the whole fleet

        # The gateway judges each generation of its view on that generation's reports. Devices that switched
        # reported at once; the others hear of the new generation at their next check-in and report then.
        def reporting() -> int:
            return sum(
                h.reporting_devices for h in s.harness.gateway.summary("default").health if h.version == s.stable
            )

        assert reporting() == len(seen_on_candidate)
        await s.clock.advance(61.0)  # one check-in interval

        async def everyone_reported() -> None:
            while reporting() < 200:
                await asyncio.sleep(0.002)

        await asyncio.wait_for(everyone_reported(), PATIENCE)
        assert reporting() == 200
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_devices_away_during_an_abort_come_back_on_stable(
    scenario_factory: Callable[[RolloutFleetSpec], Scenario],
) -> None:
    s = scenario_factory(RolloutFleetSpec(devices=80, seed=12))
    s.harness.set_view(stable=s.stable, candidate=s.candidate, weight=50.0)
    stop = asyncio.Event()
    running = asyncio.create_task(s.fleet.run(stop))
    try:
        await s.converged("half on the candidate")
        away = sorted(s.canary_ids())[:10]
        s.fleet.go_offline(away)
        await s.converged("the rest", s.expected())  # nothing changed yet
        assert not set(away) & s.fleet.online()

        s.harness.set_view(stable=s.stable, candidate=s.candidate, weight=0.0)  # abort while they are away
        here = lambda device_id: device_id not in away  # noqa: E731
        await s.converged(
            "connected devices back on stable", Counter({s.stable: 80 - len(away), s.candidate: len(away)})
        )
        assert {s.fleet.updater(i).running_version for i in away} == {s.candidate}  # away: still on the candidate
        assert s.expected(online=here)[s.stable] == 70

        s.fleet.come_online(away)
        await s.converged("the returning devices on stable too", Counter({s.stable: 80}))
        assert set(away) <= s.fleet.online()
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_a_tampered_candidate_is_refused_and_reported_by_every_device_assigned_it(
    scenario_factory: Callable[[RolloutFleetSpec], Scenario],
) -> None:
    s = scenario_factory(RolloutFleetSpec(devices=100, seed=13))
    s.harness.set_view(stable=s.stable)
    stop = asyncio.Event()
    running = asyncio.create_task(s.fleet.run(stop))
    try:
        await s.converged("everyone on stable", Counter({s.stable: 100}))
        s.harness.tamper(s.candidate)
        s.harness.set_view(stable=s.stable, candidate=s.candidate, weight=30.0)
        canaries = s.canary_ids()
        assert canaries

        async def all_refused() -> None:
            while s.fleet.totals().stats.refused.get("digest_mismatch", 0) < len(canaries):
                await asyncio.sleep(0.002)
                await s.clock.advance(0.05)

        await asyncio.wait_for(all_refused(), PATIENCE)
        assert s.fleet.running_versions() == Counter({s.stable: 100})  # nobody activated it
        health = {h.version: h for h in s.harness.gateway.summary("default").health}
        assert health[s.candidate].failures_by_reason == {"digest_mismatch": len(canaries)}
        assert health[s.candidate].reports == 0
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_silent_devices_follow_their_assignment_but_never_report(
    scenario_factory: Callable[[RolloutFleetSpec], Scenario],
) -> None:
    s = scenario_factory(RolloutFleetSpec(devices=50, seed=14, silent_fraction=0.2))
    s.harness.set_view(stable=s.stable)
    stop = asyncio.Event()
    running = asyncio.create_task(s.fleet.run(stop))
    try:
        await s.converged("everyone on stable", Counter({s.stable: 50}))
        silent = {d.device_id for d in s.fleet.devices if d.silent}
        assert len(silent) == 10
        health = {h.version: h for h in s.harness.gateway.summary("default").health}
        assert health[s.stable].reporting_devices == 40
        assert all(s.fleet.updater(i).stats.health_reports == 0 for i in silent)
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_scheduled_offline_windows_take_devices_away_and_bring_them_back(
    scenario_factory: Callable[[RolloutFleetSpec], Scenario],
) -> None:
    windows = OfflineWindows(fraction=0.25, start_within=10.0, mean_seconds=20.0, min_seconds=5.0)
    s = scenario_factory(RolloutFleetSpec(devices=40, seed=15, offline=windows))
    s.harness.set_view(stable=s.stable)
    away = [d for d in s.fleet.devices if d.offline is not None]
    assert len(away) == 10
    stop = asyncio.Event()
    running = asyncio.create_task(s.fleet.run(stop))
    try:
        # Into the middle of one device's window: it is away, and a change made now does not reach it.
        target = away[0]
        assert target.offline is not None
        middle = (target.offline[0] + target.offline[1]) / 2
        await s.clock.advance(middle)
        for _ in range(50):
            await asyncio.sleep(0.002)
        assert target.device_id not in s.fleet.online()
        expected_online = {d.device_id for d in s.fleet.devices if not d.offline_at(s.clock.now())}
        assert s.fleet.online() == expected_online

        # Past every window: everyone is back and converged.
        last_end = max(d.offline[1] for d in away if d.offline is not None)
        await s.clock.advance(last_end - s.clock.now() + 1.0)
        await s.converged("everyone on stable after their windows", Counter({s.stable: 40}))
        assert s.fleet.online() == {d.device_id for d in s.fleet.devices}
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_a_fleet_joining_over_an_interval_comes_online_spread_over_it(tmp_path: Path, pool: Dataset) -> None:
    s = Scenario(tmp_path, pool, RolloutFleetSpec(devices=60, seed=16), join_within_seconds=10.0)
    s.harness.set_view(stable=s.stable)
    stop = asyncio.Event()
    running = asyncio.create_task(s.fleet.run(stop))
    try:
        await settle()
        online = [len(s.fleet.online())]
        for _ in range(10):
            await s.clock.advance(1.0)
            await settle()
            online.append(len(s.fleet.online()))
        assert online[0] == 0 and online[-1] == 60  # nobody at once, everybody within the interval
        assert online == sorted(online) and all(0 < n < 60 for n in online[2:9])  # arriving all along it
        assert 15 <= online[5] <= 45
        assert s.fleet.running_versions() == Counter({s.stable: 60})
        # Their periodic check-ins keep the spread: a minute later they do not all check in at one moment.
        before = s.fleet.totals().stats.check_ins
        await s.clock.advance(55.0)
        await settle()
        step = s.fleet.totals().stats.check_ins
        await s.clock.advance(5.0)
        await settle()
        assert step - before < 60 and s.fleet.totals().stats.check_ins - step < 60
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)

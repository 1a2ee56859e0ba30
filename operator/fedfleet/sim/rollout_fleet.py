"""A simulated fleet for model rollouts: N devices in one process, each running the real device SDK
(`device.model_updates.ModelUpdater`) against a fleet gateway, in process or over gRPC.

    fleet = RolloutFleet(RolloutFleetSpec(devices=500, seed=7), holdout_pool(), link_for, trusted, clock=clock)
    task = asyncio.create_task(fleet.run())
    ...
    fleet.running_versions()        # Counter: how many devices run each version, asked of the devices

Each device is one asyncio task. It follows its assignment while online; at the start of its offline window
(or when a test sends it away with `go_offline`) its connection is dropped mid-whatever it was doing, and when it
comes back it checks in again and converges on its current assignment. Decoded models are shared by digest
(`SharedModels`) and latency is simulated per device class (`SimulatedEvaluator`), so 500 devices cost about
as much as one plus their own few held-out examples. Time comes from the injected clock: simulated seconds of a
`ScaledClock` beside a real gateway, or a `ManualClock` a test advances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from fedfleet.data.datasets import Dataset, DatasetName, job_split, load_dataset
from fedfleet.device.agent import describe_failure
from fedfleet.device.artifact_download import DownloadLimits
from fedfleet.device.clock import Clock, WallClock
from fedfleet.device.model_updates import (
    CheckInAnswer,
    FleetLink,
    HealthReport,
    LinkError,
    ModelOffer,
    ModelUpdater,
    UpdaterStats,
)
from fedfleet.device.retry import Backoff
from fedfleet.models.artifact_torch import to_module
from fedfleet.security.signing import TrustedKeys
from fedfleet.sim.rollout_devices import DEVICE_CLASS, RolloutFleetSpec, SimulatedDevice, build_devices
from fedfleet.sim.rollout_evaluation import SharedModels, SimulatedEvaluator

log = logging.getLogger("fedfleet.sim.rollout")

#: Downloads the fleet runs at once, like the bandwidth a real fleet shares. It bounds the artifact bytes in
#: flight too: 500 devices fetching a 6 MB model at the same moment would hold 3 GB.
DEFAULT_CONCURRENT_DOWNLOADS = 16

LinkFactory = Callable[[SimulatedDevice], FleetLink]
"""A new connection for a device each time it comes online (closed, if it has `close`, when it goes away)."""


def holdout_pool(dataset: DatasetName = "mnist5k", test_samples: int = 500, seed: int = 0) -> Dataset:
    """The examples a rollout fleet's devices evaluate on: the test split a FederatedJob with this dataset,
    `simulation.testSamples` and seed never trains on (the whole data set when `test_samples` is 0)."""
    if test_samples == 0:
        return load_dataset(dataset)
    _, test = job_split(dataset, test_samples, seed)
    assert test is not None
    return test


@dataclass
class FleetTotals:
    """The fleet's updater counters summed over devices, and the devices that stopped for good."""

    stats: UpdaterStats = field(default_factory=UpdaterStats)
    errors: dict[str, str] = field(default_factory=dict)  # device id -> why it stopped


class RolloutFleet:
    def __init__(
        self,
        spec: RolloutFleetSpec,
        pool: Dataset,
        link_for: LinkFactory,
        trusted: TrustedKeys,
        *,
        clock: Clock | None = None,
        limits: DownloadLimits | None = None,
        backoff: Backoff | None = None,
        shared: SharedModels | None = None,
        max_concurrent_downloads: int = DEFAULT_CONCURRENT_DOWNLOADS,
        report_every_seconds: float | None = None,
        join_within_seconds: float = 0.0,
    ) -> None:
        if max_concurrent_downloads < 1:
            raise ValueError(f"max_concurrent_downloads must be at least 1, got {max_concurrent_downloads}")
        if not (math.isfinite(join_within_seconds) and join_within_seconds >= 0):
            raise ValueError(f"join_within_seconds must be a finite number >= 0, got {join_within_seconds}")
        self.spec = spec
        self._uplink = asyncio.Semaphore(max_concurrent_downloads)
        self.clock = clock or WallClock()
        self.link_for = link_for
        self.shared = shared or SharedModels(to_module)
        self.devices = build_devices(spec, len(pool))
        self.updaters: dict[str, ModelUpdater] = {}
        for device in self.devices:
            evaluator = SimulatedEvaluator(
                pool.x[device.holdout_indices],
                pool.y[device.holdout_indices],
                device.attributes.get(DEVICE_CLASS, ""),
                _device_stream(spec.seed, "rollout.latency", device.ordinal),
            )
            self.updaters[device.device_id] = ModelUpdater(
                _Disconnected(),
                attributes=device.attributes,
                trusted=trusted,
                evaluator=evaluator,
                clock=self.clock,
                limits=limits,
                backoff=backoff or _device_backoff(spec.seed, device.ordinal),
                loader=self.shared.load,
                reports_health=not device.silent,
                report_every_seconds=report_every_seconds,
                name=device.device_id,
            )
        # When each device first comes online: all at once unless spread out. A fleet that joins in one instant
        # checks in in lockstep ever after, so an analysis just after a change would hear from nobody, then
        # from everyone at once; spread, its check-ins (and reports) arrive all through every interval.
        self._joins = {
            d.device_id: float(_device_stream(spec.seed, "rollout.join", d.ordinal).uniform(0.0, join_within_seconds))
            if join_within_seconds > 0
            else 0.0
            for d in self.devices
        }
        self.errors: dict[str, str] = {}
        self._by_id = {d.device_id: d for d in self.devices}
        self._sent_away: set[str] = set()
        self._online: set[str] = set()
        self._changed = {d.device_id: asyncio.Event() for d in self.devices}
        self._away: dict[str, asyncio.Event] = {}  # set when the device's current online period ends

    # ---- counting, from the devices themselves -----------------------------------------------------------

    def running_versions(self, *, online_only: bool = False) -> Counter[str | None]:
        """How many devices run each version right now (None: no model yet), asked of each device."""
        return Counter(u.running_version for i, u in self.updaters.items() if not online_only or i in self._online)

    def share_running(self, version: str, *, online_only: bool = False) -> float:
        """The share of devices (0..1) that run `version` now."""
        counts = self.running_versions(online_only=online_only)
        total = sum(counts.values())
        return counts[version] / total if total else 0.0

    def online(self) -> frozenset[str]:
        """Devices connected (or connecting) to the gateway now."""
        return frozenset(self._online)

    def updater(self, device_id: str) -> ModelUpdater:
        return self.updaters[device_id]

    def totals(self) -> FleetTotals:
        totals = FleetTotals(errors=dict(self.errors))
        sums = totals.stats
        for u in self.updaters.values():
            for f in fields(UpdaterStats):
                mine, theirs = getattr(sums, f.name), getattr(u.stats, f.name)
                if isinstance(theirs, dict):
                    for reason, count in theirs.items():
                        mine[reason] = mine.get(reason, 0) + count
                else:
                    setattr(sums, f.name, mine + theirs)
        return totals

    # ---- tests send devices away and bring them back ----------------------------------------------------

    def go_offline(self, device_ids: Iterable[str]) -> None:
        """Take these devices off the network now (whatever they were doing), until `come_online`."""
        for device_id in self._known(device_ids):
            self._sent_away.add(device_id)
            # At once, not on the device task's next turn: nothing the gateway says from now on reaches it.
            self._online.discard(device_id)
            away = self._away.get(device_id)
            if away is not None:
                away.set()
            self._changed[device_id].set()

    def come_online(self, device_ids: Iterable[str]) -> None:
        for device_id in self._known(device_ids):
            self._sent_away.discard(device_id)
            self._changed[device_id].set()

    def is_online_now(self, device: SimulatedDevice) -> bool:
        return device.device_id not in self._sent_away and not device.offline_at(self.clock.now())

    def _known(self, device_ids: Iterable[str]) -> list[str]:
        ids = list(device_ids)
        unknown = [i for i in ids if i not in self._by_id]
        if unknown:
            raise KeyError(f"no such device in this fleet: {', '.join(unknown[:5])}")
        return ids

    # ---- running ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> FleetTotals:
        """Run every device until `stop` is set (or this task is cancelled)."""
        stop = stop or asyncio.Event()
        lives = [asyncio.create_task(self._live(device, stop), name=device.device_id) for device in self.devices]
        try:
            await asyncio.gather(*lives)
        finally:
            for task in lives:
                task.cancel()
            await asyncio.gather(*lives, return_exceptions=True)
        return self.totals()

    async def _live(self, device: SimulatedDevice, stop: asyncio.Event) -> None:
        changed = self._changed[device.device_id]
        join = self._joins[device.device_id]
        if join > 0:
            await _first(stop.wait(), self.clock.sleep(join))
        while not stop.is_set():
            changed.clear()
            if not self.is_online_now(device):
                await _first(stop.wait(), changed.wait(), self._until_window_ends(device))
                continue
            away = asyncio.Event()
            self._away[device.device_id] = away
            watchers = [
                asyncio.create_task(_set_after(away, stop.wait())),
                asyncio.create_task(_set_after(away, changed.wait())),
                asyncio.create_task(_set_after(away, self._until_window_starts(device))),
            ]
            link = self.link_for(device)
            updater = self.updaters[device.device_id]
            updater.link = _SharedUplink(link, self._uplink)
            self._online.add(device.device_id)
            try:
                await updater.run(away)
            except Exception as err:
                # A LinkError: the gateway refused the device for good. Anything else is a fault in the device:
                # either way this device stops, says why, and the rest of the fleet carries on.
                self.errors[device.device_id] = describe_failure(err)
                log.warning("%s: stopped: %s", device.device_id, self.errors[device.device_id])
                return
            finally:
                self._online.discard(device.device_id)
                for watcher in watchers:
                    watcher.cancel()
                close = getattr(link, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()

    async def _until_window_ends(self, device: SimulatedDevice) -> None:
        if device.offline is None or not device.offline_at(self.clock.now()):
            await asyncio.Event().wait()  # not in its window: only `come_online` or stop end the wait
        else:
            await self.clock.sleep(device.offline[1] - self.clock.now())

    async def _until_window_starts(self, device: SimulatedDevice) -> None:
        now = self.clock.now()
        if device.offline is None or device.offline[0] < now:
            await asyncio.Event().wait()  # its window is over, or it never has one
        else:
            await self.clock.sleep(device.offline[0] - now)


class _SharedUplink:
    """A device's link whose downloads take turns with the rest of the fleet's."""

    def __init__(self, link: FleetLink, slots: asyncio.Semaphore) -> None:
        self.link = link
        self.slots = slots

    async def check_in(self, attributes: Mapping[str, str], running: str | None) -> CheckInAnswer:
        return await self.link.check_in(attributes, running)

    def watch(self, attributes: Mapping[str, str]) -> AsyncIterator[ModelOffer | None]:
        return self.link.watch(attributes)

    async def download(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        async with self.slots:
            async for chunk in self.link.download(digest, offset):
                yield chunk

    async def report_health(self, report: HealthReport, attributes: Mapping[str, str]) -> None:
        await self.link.report_health(report, attributes)


def _device_backoff(seed: int, ordinal: int) -> Backoff:
    """Each device's own jitter, from the seed: a fleet reconnecting after a gateway restart spreads out."""
    return Backoff(initial=0.5, maximum=5.0, rng=random.Random(f"rollout.backoff/{seed}/{ordinal}"))


def _device_stream(seed: int, purpose: str, ordinal: int) -> np.random.Generator:
    """One device's own random stream for one purpose: independent of every other device's and purpose's."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode()), ordinal])


class _Disconnected:
    """The link of a device before it first comes online: every call fails as a lost connection would."""

    async def check_in(self, attributes: Mapping[str, str], running: str | None) -> CheckInAnswer:
        raise LinkError("not connected", transient=True)

    def watch(self, attributes: Mapping[str, str]) -> AsyncIterator[ModelOffer | None]:
        return _NoStream()

    def download(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        return _NoStream()

    async def report_health(self, report: HealthReport, attributes: Mapping[str, str]) -> None:
        raise LinkError("not connected", transient=True)


class _NoStream:
    """A stream that fails at its first item."""

    def __aiter__(self) -> _NoStream:
        return self

    async def __anext__(self) -> Any:
        raise LinkError("not connected", transient=True)


async def _set_after(event: asyncio.Event, awaitable: Awaitable[object]) -> None:
    await awaitable
    event.set()


async def _first(*awaitables: Awaitable[object]) -> None:
    """Wait until one of these finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

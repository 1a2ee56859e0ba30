"""The open WatchAssignment streams: on a change of a fleet's view, each stream of that fleet gets its device's
new assignment, and only the streams whose assignment changed are woken.

Each stream holds one pending slot, not a queue: a device that reads slowly while the view changes three times
gets the newest assignment once, never a backlog (memory per stream is constant), and an assignment that
changes and changes back before the device read it is not sent at all. Streams are capped per device and in
total, so 10,000 devices fit in one process and a device that opens streams in a loop cannot exhaust it. No
thread per stream: a stream is a coroutine waiting on its slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fedfleet.proto.refusals import Refusal
from fedfleet.rollout.assignment import Assignment

from .errors import GatewayError
from .releases import Release


@dataclass(frozen=True)
class DeviceAssignment:
    """An assignment as a device receives it: with the signed release of its version and the view's generation."""

    assignment: Assignment
    release: Release | None  # None when there is no version to run
    generation: int


class WatchClosed(Exception):
    """The gateway closed the stream (it is shutting down): the device reconnects, to this replica or another."""


class Watch:
    """One device's open stream."""

    def __init__(self, fleet: str, device_id: str, attributes: Mapping[str, str], first: DeviceAssignment) -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.attributes = dict(attributes)
        self._delivered: Assignment | None = None
        self._pending: DeviceAssignment | None = first
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def pending(self) -> DeviceAssignment | None:
        return self._pending

    def offer(self, candidate: DeviceAssignment) -> bool:
        """The device's assignment under a new view; True when the device will be told about it."""
        if candidate.assignment == self._delivered:
            self._pending = None  # changed and changed back before it was read: nothing to tell
            return False
        if self._pending is not None and self._pending.assignment == candidate.assignment:
            return False
        self._pending = candidate
        self._wake.set()
        return True

    async def next(self, timeout: float | None) -> DeviceAssignment | None:
        """The next assignment to send, or None when `timeout` seconds pass without one (time for a keepalive).
        Raises WatchClosed once the stream is closed."""
        if self._pending is None and not self._closed:
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return None
        if self._closed:
            raise WatchClosed
        sent, self._pending = self._pending, None
        if sent is not None:
            self._delivered = sent.assignment
        return sent

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class WatchRegistry:
    def __init__(self, max_streams: int, max_per_device: int, on_count: Callable[[int], None] = lambda n: None) -> None:
        self._max_streams = max_streams
        self._max_per_device = max_per_device
        self._on_count = on_count
        self._by_fleet: dict[str, set[Watch]] = {}
        self._per_device: dict[tuple[str, str], int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def open(self, fleet: str, device_id: str, attributes: Mapping[str, str], first: DeviceAssignment) -> Watch:
        """A new stream; raises GatewayError(TOO_MANY_WATCHES) past a cap."""
        key = (fleet, device_id)
        if self._per_device.get(key, 0) >= self._max_per_device:
            raise GatewayError(
                Refusal.TOO_MANY_WATCHES,
                f"this device already has {self._max_per_device} open WatchAssignment stream(s); close one first",
            )
        if self._count >= self._max_streams:
            raise GatewayError(
                Refusal.TOO_MANY_WATCHES, f"the gateway holds its maximum of {self._max_streams} streams; retry later"
            )
        watch = Watch(fleet, device_id, attributes, first)
        self._by_fleet.setdefault(fleet, set()).add(watch)
        self._per_device[key] = self._per_device.get(key, 0) + 1
        self._count += 1
        self._on_count(self._count)
        return watch

    def close(self, watch: Watch) -> None:
        watch.close()
        streams = self._by_fleet.get(watch.fleet)
        if streams is None or watch not in streams:
            return
        streams.remove(watch)
        key = (watch.fleet, watch.device_id)
        left = self._per_device[key] - 1
        if left:
            self._per_device[key] = left
        else:
            del self._per_device[key]
        self._count -= 1
        self._on_count(self._count)

    def recompute(self, fleet: str, assignment_for: Callable[[Watch], DeviceAssignment]) -> int:
        """Offer every stream of `fleet` its assignment under the fleet's new view; returns how many changed."""
        return sum(watch.offer(assignment_for(watch)) for watch in list(self._by_fleet.get(fleet, ())))

    def close_all(self) -> None:
        for streams in list(self._by_fleet.values()):
            for watch in list(streams):
                self.close(watch)

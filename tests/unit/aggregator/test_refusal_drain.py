"""Draining a stream before refusing it is bounded: by bytes, and by time for a client that stops sending."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fedfleet.aggregator.service import drain
from fedfleet.proto.v1 import aggregator_pb2 as pb


async def _chunks(count: int, size: int, then_stall: bool = False) -> AsyncIterator[pb.UpdateChunk]:
    for _ in range(count):
        yield pb.UpdateChunk(data=b"x" * size)
    if then_stall:
        await asyncio.sleep(3600)


def test_a_stream_that_ends_is_read_to_its_end() -> None:
    assert asyncio.run(drain(_chunks(10, 100), max_bytes=10_000))


def test_more_than_the_bound_stops_the_drain() -> None:
    assert not asyncio.run(drain(_chunks(1000, 1000), max_bytes=10_000))


def test_a_stalled_stream_stops_the_drain_at_the_time_bound() -> None:
    assert not asyncio.run(drain(_chunks(2, 10, then_stall=True), max_bytes=10_000, seconds=0.05))

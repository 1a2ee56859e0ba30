"""Turning a chunked upload stream into a ModelUpdate, or into a precise rejection.

The stream is a header (round, declared dtype, tensor layout, total bytes), data chunks, and a trailer with
the SHA-256 of the data; a secure-aggregation masked input travels the same way, with its own header.
Checks run in the order that reads the least: the header first (the caller then checks the sender against
the round before any payload is read), then the byte count and the digest, then names, shapes and dtype.
The round engine checks the rest (size limit, dtype, shape, finiteness, weight).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from fedfleet.engine.round import UpdateRejected
from fedfleet.engine.types import ModelUpdate, RejectReason
from fedfleet.proto import codec
from fedfleet.proto.v1 import aggregator_pb2 as pb

T = TypeVar("T")


@dataclass(frozen=True)
class UploadHeader:
    round: int
    model_version: int
    num_examples: int
    train_loss: float
    dtype: str
    layout: codec.Layout
    total_bytes: int


def read_header(first: pb.UpdateChunk | None) -> UploadHeader:
    if first is None:
        raise UpdateRejected(RejectReason.CORRUPT, "the upload stream is empty: it must start with a header")
    if first.WhichOneof("part") != "header":
        raise UpdateRejected(RejectReason.CORRUPT, "the first message of an upload must be its header")
    h = first.header
    if h.total_bytes < 0:
        raise UpdateRejected(RejectReason.CORRUPT, f"header.total_bytes must not be negative, got {h.total_bytes}")
    return UploadHeader(
        round=h.round,
        model_version=h.model_version,
        num_examples=h.num_examples,
        train_loss=h.train_loss,
        dtype=h.dtype,
        layout=codec.layout_from_proto(h.layout),
        total_bytes=h.total_bytes,
    )


def check_declared_size(header: UploadHeader, limit: int) -> None:
    """Refuse an oversized update from its header, before its bytes are read."""
    if header.total_bytes > limit:
        raise UpdateRejected(RejectReason.TOO_LARGE, f"update is {header.total_bytes} bytes, the limit is {limit}")


class PayloadAssembler:
    """Collects data chunks into one buffer of the declared size and hashes them in a worker thread.

    hashlib releases the GIL on large buffers, so hashing chunk n overlaps receiving chunk n+1 (SHA-256 of a
    40 MB update is ~20 ms here, as much as moving it). One worker keeps the updates in order.
    """

    def __init__(self, total_bytes: int, hasher: Executor) -> None:
        self._total_bytes = total_bytes
        # Grows as bytes arrive: a stream that declares a full update and then stalls reserves nothing.
        self._buffer = bytearray()
        self._received = 0
        self._hash = hashlib.sha256()
        self._hasher = hasher
        self._pending: Future[None] | None = None
        self._digest: bytes | None = None

    @property
    def received(self) -> int:
        return self._received

    def add(self, chunk: pb.UpdateChunk | pb.MaskedInputChunk) -> int:
        """Take one message after the header; returns the payload bytes it carried."""
        part = chunk.WhichOneof("part")
        if self._digest is not None:
            raise UpdateRejected(RejectReason.CORRUPT, "nothing may follow the trailer of an upload")
        if part == "trailer":
            self._digest = chunk.trailer.sha256
            return 0
        if part != "data":
            raise UpdateRejected(RejectReason.CORRUPT, "an upload carries one header, then data chunks and a trailer")
        data = chunk.data
        end = self._received + len(data)
        if end > self._total_bytes:
            raise UpdateRejected(
                RejectReason.CORRUPT,
                f"the stream carries more than the {self._total_bytes} bytes its header declares",
            )
        self._buffer += data
        self._pending = self._hasher.submit(self._hash.update, data)
        self._received = end
        return len(data)

    async def finish(self) -> bytearray:
        declared = self._total_bytes
        if self._pending is not None:
            await asyncio.wrap_future(self._pending)  # the single worker ran every earlier update before it
        if self._received != declared:
            raise UpdateRejected(
                RejectReason.CORRUPT,
                f"the stream ended after {self._received} of {declared} declared bytes (truncated)",
            )
        if self._digest is None:
            raise UpdateRejected(RejectReason.CORRUPT, "the stream ended without its SHA-256 trailer (truncated)")
        if self._hash.digest() != self._digest:
            raise UpdateRejected(RejectReason.CORRUPT, "SHA-256 digest mismatch: the payload was corrupted in transit")
        return self._buffer

    async def abandon(self) -> None:
        """Wait for the hashing of a refused stream to stop touching its chunks."""
        if self._pending is not None:
            await asyncio.wrap_future(self._pending)


async def idle_bounded(chunks: AsyncIterator[T], idle_seconds: float) -> AsyncIterator[T]:
    """The stream's messages, refusing it (STALLED) once it sends nothing for `idle_seconds`: an open stream
    holds a place in its round and memory, so a silent one must not hold them for ever."""
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(iterator), idle_seconds)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UpdateRejected(
                RejectReason.STALLED, f"the upload sent nothing for {idle_seconds:g} s and was dropped"
            ) from None
        yield chunk


def decode_update(device_id: str, header: UploadHeader, payload: bytearray, layout: codec.Layout) -> ModelUpdate:
    """The ModelUpdate the payload holds, checked against the model's layout (names, shapes, dtype)."""
    mismatch = codec.describe_layout_mismatch(layout, header.layout)
    if mismatch is not None:
        raise UpdateRejected(RejectReason.LAYOUT, f"tensor layout does not match the model: {mismatch}")
    mismatch = codec.describe_shape_mismatch(layout, header.layout)
    if mismatch is not None:
        raise UpdateRejected(RejectReason.SHAPE, mismatch)
    if header.dtype not in codec.DTYPES:
        raise UpdateRejected(
            RejectReason.DTYPE, f"update dtype {header.dtype!r} is unknown, expected {codec.WIRE_DTYPE}"
        )
    elements = sum(math.prod(shape) for _, shape in header.layout)
    itemsize = codec.DTYPES[header.dtype].itemsize
    if elements * itemsize != len(payload):
        raise UpdateRejected(
            RejectReason.SHAPE,
            f"payload has {len(payload)} bytes, the layout declares {elements} {header.dtype} values",
        )
    delta = codec.decode_vector(payload, header.dtype)
    return ModelUpdate(
        device_id=device_id,
        round=header.round,
        num_examples=header.num_examples,
        delta=delta,  # type: ignore[arg-type]  # a wrong dtype is for the round engine to refuse
        train_loss=header.train_loss if np.isfinite(header.train_loss) else float("nan"),
    )

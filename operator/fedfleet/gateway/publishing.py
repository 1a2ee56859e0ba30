"""Taking a model artifact from an upload stream into the store.

The stream is spooled to a temporary file first, checking on the way that it never exceeds the size its
header announced, then handed to the store on a worker thread, which hashes it and keeps it only if it matches
the announced digest. Spooling keeps the event loop free (no blocking store call in it, no thread blocked on
the network), and a temporary file is deleted whatever happens, so a broken upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from fedfleet.persist.artifact_store import ArtifactStore, ArtifactStoreError
from fedfleet.proto.refusals import Refusal

from .errors import GatewayError

#: Bytes per read when the spooled file is handed to the store.
HANDOFF_CHUNK_BYTES = 1 << 20


async def publish_stream(
    store: ArtifactStore, chunks: AsyncIterator[bytes], digest: str, size: int, spool_dir: Path
) -> str:
    """Store the `size` bytes of `chunks` as the artifact `digest`; GatewayError(PUBLISH_REJECTED) when the
    stream is longer or shorter than announced or the store refuses the bytes."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".publish.", suffix=".part", dir=spool_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as spool:
            received = await _spool(chunks, spool, size)
        if received != size:
            raise GatewayError(
                Refusal.PUBLISH_REJECTED, f"the stream ended after {received} bytes; its header announced {size}"
            )
        try:
            return await asyncio.to_thread(store.put_stream, _read(path), digest, size)
        except ArtifactStoreError as exc:
            raise GatewayError(Refusal.PUBLISH_REJECTED, f"the artifact was not stored: {exc.message}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _spool(chunks: AsyncIterator[bytes], spool: BinaryIO, size: int) -> int:
    received = 0
    async for data in chunks:
        received += len(data)
        if received > size:
            raise GatewayError(
                Refusal.PUBLISH_REJECTED, f"the stream sent more than the {size} bytes its header announced"
            )
        spool.write(data)
    return received


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(HANDOFF_CHUNK_BYTES):
            yield chunk

"""The bytes of one model artifact as a device receives them: bounded by the size its signed release record
states, and resumable where a broken or truncated stream stopped.

Nothing here trusts the server: a stream that sends more than the signed size, an empty chunk, or more chunks
than the limits allow is cut off at once (the device never buffers past the size it was promised). Whether
the bytes are the right ones is decided afterwards, by the digest and signature checks before activation.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The largest chunk a device accepts (the gateway sends much smaller ones).
MAX_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class DownloadLimits:
    """What one device spends on one artifact at most."""

    max_bytes: int = 256 << 20  # an artifact whose signed size is larger is refused before any download
    max_chunks: int = 1 << 16  # chunks over all attempts: bounds the work a server trickling bytes causes
    attempts: int = 8  # stream calls that made no progress before the device gives up on the version
    call_seconds: float = 60.0  # one download call (wall seconds): a stalled stream is dropped and resumed
    total_seconds: float = 600.0  # the whole download, resumes included (device clock)

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_chunks", "attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"download limit {name} must be at least 1, got {getattr(self, name)}")
        for name in ("call_seconds", "total_seconds"):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ValueError(f"download limit {name} must be a finite number of seconds > 0, got {value}")


class DownloadRefused(Exception):
    """The server sent what a correct download never contains; the device stops and keeps nothing."""


class PartialDownload:
    """The first `offset` bytes of the artifact with this digest; complete once `offset == size`."""

    def __init__(self, digest: str, size: int, limits: DownloadLimits) -> None:
        if size < 1:
            raise DownloadRefused(f"the signed release states {size} bytes; an artifact has at least 1")
        if size > limits.max_bytes:
            raise DownloadRefused(f"the signed release states {size} bytes, more than this device's {limits.max_bytes}")
        self.digest = digest
        self.size = size
        self.limits = limits
        self.chunks = 0
        self._buffer = bytearray()

    @property
    def offset(self) -> int:
        return len(self._buffer)

    def is_complete(self) -> bool:
        # A method, not a property: the value changes with every `add`.
        return self.offset == self.size

    def add(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append the next chunk; refuse one that is empty, oversized, past the signed size or over the count."""
        length = len(chunk)
        self.chunks += 1
        if self.chunks > self.limits.max_chunks:
            raise DownloadRefused(f"more than {self.limits.max_chunks} chunks for a {self.size}-byte artifact")
        if length == 0:
            raise DownloadRefused(f"an empty chunk at offset {self.offset}")
        if length > MAX_CHUNK_BYTES:
            raise DownloadRefused(f"a chunk of {length} bytes, more than {MAX_CHUNK_BYTES}")
        if self.offset + length > self.size:
            raise DownloadRefused(
                f"the stream sent more than the signed size of {self.size} bytes (offset {self.offset} + {length})"
            )
        self._buffer += chunk

    def data(self) -> bytes:
        if not self.is_complete():
            raise ValueError(f"download of {self.digest} has {self.offset} of {self.size} bytes")
        return bytes(self._buffer)

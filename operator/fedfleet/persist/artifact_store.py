"""Model artifacts stored by their digest on a directory: the fleet gateway's volume.

    <root>/sha256/<64 hex>                  the artifact's bytes, never changed once written
    <root>/sha256/<64 hex>.metadata.json    its header's metadata (job, round, accuracy, ε, …) for listings

A blob is only ever renamed into place after its bytes were hashed to exactly the digest it is named by and
its header was validated, so a name always means those bytes; writes go through `persist.atomic`, so a
crash leaves a blob whole or absent. The metadata sidecar is written before its blob and is derived data:
a missing or damaged one is rebuilt from the blob's header.

Digests come from the network (a device asks for one, a publisher announces one), so every digest is
checked against "sha256:" + 64 lowercase hex before it becomes part of a path: no traversal, no aliases.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from fedfleet.models.artifact import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    MAX_HEADER_BYTES,
    PREFIX_BYTES,
    ArtifactError,
    ArtifactHeader,
    ModelMetadata,
    decode,
    decode_header,
    digest_of,
    is_digest,
)
from fedfleet.models.canonical import canonical_json, parse_canonical_json
from fedfleet.persist.atomic import atomic_write_bytes, atomic_writer

#: The most one `read_chunk` returns: a download is many chunks, so no request pins a large buffer.
MAX_READ_CHUNK = 4 << 20
#: The bytes that always hold an artifact's prefix and whole header.
_HEAD_BYTES = PREFIX_BYTES + MAX_HEADER_BYTES
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")
_SIDECAR_SUFFIX = ".metadata.json"


class StoreProblem(StrEnum):
    INVALID_DIGEST = "invalid_digest"  # not "sha256:" + 64 lowercase hex
    NOT_FOUND = "not_found"
    OUT_OF_RANGE = "out_of_range"  # a read outside the artifact, or a chunk length out of bounds
    TOO_LARGE = "too_large"  # an upload over its byte limit
    DIGEST_MISMATCH = "digest_mismatch"  # the uploaded bytes are not the ones announced
    MALFORMED_ARTIFACT = "malformed_artifact"  # the bytes are not a valid model artifact


class ArtifactStoreError(Exception):
    """A refused store operation; `problem` says which (and so which status code a service answers)."""

    def __init__(self, problem: StoreProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


class ArtifactUpload:
    """An artifact arriving in chunks (see `ArtifactStore.upload`): hashed and counted as it is written."""

    def __init__(self, handle: BinaryIO, digest: str, max_bytes: int) -> None:
        self.digest = digest
        self._handle = handle
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._size = 0
        self._head = bytearray()

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        if not isinstance(chunk, bytes):
            raise TypeError(f"chunks must be bytes, got {type(chunk).__name__}")
        if self._size + len(chunk) > self._max_bytes:
            raise ArtifactStoreError(
                StoreProblem.TOO_LARGE, f"upload of {self.digest}: more than the limit of {self._max_bytes} bytes"
            )
        self._hash.update(chunk)
        self._handle.write(chunk)
        if len(self._head) < _HEAD_BYTES:
            self._head += chunk[: _HEAD_BYTES - len(self._head)]
        self._size += len(chunk)

    def finish(self) -> ArtifactHeader:
        """Check the whole upload: its digest, then its header against its size."""
        actual = f"sha256:{self._hash.hexdigest()}"
        if actual != self.digest:
            raise ArtifactStoreError(
                StoreProblem.DIGEST_MISMATCH, f"upload announced {self.digest} but its {self._size} bytes are {actual}"
            )
        try:
            return decode_header(bytes(self._head), self._size, self._max_bytes)
        except ArtifactError as exc:
            raise ArtifactStoreError(StoreProblem.MALFORMED_ARTIFACT, f"upload of {self.digest}: {exc}") from None


class ArtifactStore:
    """Content-addressed artifacts under `root`. One store object per directory per process: opening a
    store removes the temporary files an interrupted upload left behind."""

    def __init__(self, root: Path, max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES) -> None:
        if max_artifact_bytes <= PREFIX_BYTES:
            raise ValueError(f"max_artifact_bytes must be more than {PREFIX_BYTES}, got {max_artifact_bytes}")
        self.root = Path(root)
        self.max_artifact_bytes = max_artifact_bytes
        self._blobs = self.root / "sha256"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._remove_interrupted_uploads()

    def put(self, data: bytes) -> str:
        """Store a whole artifact held in memory (validated first); return its digest. Storing the same
        bytes again changes nothing."""
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        try:
            artifact = decode(data, self.max_artifact_bytes)
        except ArtifactError as exc:
            problem = StoreProblem.TOO_LARGE if len(data) > self.max_artifact_bytes else StoreProblem.MALFORMED_ARTIFACT
            raise ArtifactStoreError(problem, str(exc)) from None
        digest = digest_of(data)
        self._write_sidecar(digest, artifact.metadata)
        if not self._blob(digest).is_file():
            atomic_write_bytes(self._blob(digest), data)
        return digest

    def put_stream(self, chunks: Iterable[bytes], expected_digest: str, max_bytes: int) -> str:
        """Store an artifact that arrives in chunks and must have `expected_digest`; return the digest.

        The bytes go to a temporary file while they are hashed; more than `max_bytes` (or the store's own
        limit), a different digest or an invalid artifact removes it and raises. Nothing partial is left.
        """
        with self.upload(expected_digest, max_bytes) as upload:
            for chunk in chunks:
                upload.write(chunk)
        return upload.digest

    @contextlib.contextmanager
    def upload(self, expected_digest: str, max_bytes: int) -> Iterator[ArtifactUpload]:
        """`put_stream` for callers that receive chunks themselves (an asynchronous gRPC stream):

            with store.upload(digest, limit) as upload:
                async for message in stream:
                    upload.write(message.data)

        The artifact is in the store when the block ends without an exception; an exception discards it.
        """
        digest = self._checked(expected_digest)
        if type(max_bytes) is not int or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        limit = min(max_bytes, self.max_artifact_bytes)
        with atomic_writer(self._blob(digest)) as handle:
            upload = ArtifactUpload(handle, digest, limit)
            yield upload
            header = upload.finish()
            # Before the blob appears: whoever sees the blob can read its metadata.
            self._write_sidecar(digest, header.metadata)

    def has(self, digest: str) -> bool:
        return self._blob(self._checked(digest)).is_file()

    def size(self, digest: str) -> int:
        path = self._blob(self._checked(digest))
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise ArtifactStoreError(StoreProblem.NOT_FOUND, f"no artifact {digest}") from None

    def read_chunk(self, digest: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes of the artifact from `offset`: fewer at its end, none at exactly its end."""
        path = self._blob(self._checked(digest))
        if type(length) is not int or not 0 < length <= MAX_READ_CHUNK:
            raise ArtifactStoreError(StoreProblem.OUT_OF_RANGE, f"length must be 1..{MAX_READ_CHUNK}, got {length!r}")
        if type(offset) is not int or offset < 0:
            raise ArtifactStoreError(
                StoreProblem.OUT_OF_RANGE, f"offset must be a non-negative integer, got {offset!r}"
            )
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if offset > size:
                    raise ArtifactStoreError(
                        StoreProblem.OUT_OF_RANGE, f"offset {offset} is past the end of {digest} ({size} bytes)"
                    )
                handle.seek(offset)
                return handle.read(length)
        except FileNotFoundError:
            raise ArtifactStoreError(StoreProblem.NOT_FOUND, f"no artifact {digest}") from None

    def digests(self) -> list[str]:
        """Every stored artifact's digest, sorted."""
        return sorted(f"sha256:{entry.name}" for entry in self._blobs.iterdir() if _BLOB_NAME.fullmatch(entry.name))

    def metadata(self, digest: str) -> ModelMetadata:
        digest = self._checked(digest)
        try:
            data = self._sidecar(digest).read_bytes()
            return ModelMetadata.from_dict(parse_canonical_json(data, "metadata"))
        except (OSError, ValueError):
            # Missing (a crash between the two writes of an older put) or damaged: it is derived data.
            metadata = self.header(digest).metadata
            self._write_sidecar(digest, metadata)
            return metadata

    def header(self, digest: str) -> ArtifactHeader:
        """The stored artifact's header (architecture, shapes, layout, metadata), read from its first bytes."""
        path = self._blob(self._checked(digest))
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                head = handle.read(_HEAD_BYTES)
        except FileNotFoundError:
            raise ArtifactStoreError(StoreProblem.NOT_FOUND, f"no artifact {digest}") from None
        try:
            return decode_header(head, size, max_bytes=size)
        except ArtifactError as exc:
            raise ArtifactStoreError(StoreProblem.MALFORMED_ARTIFACT, f"stored {digest}: {exc}") from None

    def _checked(self, digest: object) -> str:
        if not is_digest(digest):
            shown = repr(digest)[:80]
            raise ArtifactStoreError(
                StoreProblem.INVALID_DIGEST, f"digest {shown} is not 'sha256:' followed by 64 lowercase hex digits"
            )
        return digest

    def _blob(self, digest: str) -> Path:
        return self._blobs / digest.removeprefix("sha256:")

    def _sidecar(self, digest: str) -> Path:
        return self._blobs / (digest.removeprefix("sha256:") + _SIDECAR_SUFFIX)

    def _write_sidecar(self, digest: str, metadata: ModelMetadata) -> None:
        atomic_write_bytes(self._sidecar(digest), canonical_json(metadata.to_dict()))

    def _remove_interrupted_uploads(self) -> None:
        # atomic_writer's temporary files: ".<name>.<random>.tmp" next to their target.
        for entry in self._blobs.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

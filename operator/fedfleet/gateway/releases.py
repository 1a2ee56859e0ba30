"""Signed releases as the gateway holds and serves them: the record's canonical bytes (exactly what the
operator signed), the signature and the key id, checked against the artifact they describe.

The gateway never verifies signatures — devices do, against the keys they trust, and the gateway holds no
key — but it refuses a release that cannot be the one for its artifact (another digest, another size,
another architecture than the stored artifact's header), so an operator's mistake surfaces at `PutFleetView`
instead of as activation failures on every device of the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedfleet.models.artifact import MAX_SIGNATURE_BYTES, ArtifactError, ReleaseRecord, SignedRelease


class ReleaseError(ValueError):
    """The release breaks a rule; the message names it."""


@dataclass(frozen=True)
class SignedParts:
    """A signed release as it arrives: the record's bytes, the signature, the key id (the size is the store's)."""

    record: bytes
    signature: bytes
    key_id: str


@dataclass(frozen=True)
class Release:
    signed: SignedRelease

    @property
    def digest(self) -> str:
        return self.signed.record.digest

    @property
    def size(self) -> int:
        return self.signed.record.size

    @property
    def record(self) -> bytes:
        """The record's canonical bytes: what travels to devices beside the signature."""
        return self.signed.record.canonical_bytes()

    @property
    def signature(self) -> bytes:
        return self.signed.signature

    @property
    def key_id(self) -> str:
        return self.signed.record.key_id

    def to_json(self) -> dict[str, Any]:
        return self.signed.to_dict()

    @classmethod
    def from_json(cls, data: Any) -> Release:
        try:
            return cls(SignedRelease.from_dict(data))
        except ArtifactError as exc:
            raise ReleaseError(str(exc)) from None


def parse_release(digest: str, parts: SignedParts, size: int, architecture: str) -> Release:
    """The release of the stored artifact `digest` (`size` bytes of `architecture`); ReleaseError names what
    does not fit."""
    where = f"releases[{digest}]"
    record, signature, key_id = parts.record, parts.signature, parts.key_id
    if not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
        raise ReleaseError(f"{where}.signature: must be 1..{MAX_SIGNATURE_BYTES} bytes")
    try:
        parsed = ReleaseRecord.from_canonical_bytes(record)
    except ArtifactError as exc:
        raise ReleaseError(f"{where}.record: {exc}") from None
    if parsed.digest != digest:
        raise ReleaseError(f"{where}.record: names digest {parsed.digest}, not the artifact's")
    if parsed.size != size:
        raise ReleaseError(f"{where}.record: says {parsed.size} bytes; the artifact has {size}")
    if parsed.architecture != architecture:
        raise ReleaseError(f"{where}.record: says architecture {parsed.architecture}; the artifact is {architecture}")
    if parsed.key_id != key_id:
        raise ReleaseError(f"{where}.key_id: {key_id[:80]!r} is not the record's key {parsed.key_id!r}")
    return Release(SignedRelease(parsed, signature))

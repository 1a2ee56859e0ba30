"""Signing release records, and what a device checks before it activates a downloaded model.

The record format lives with the artifact format (`models.artifact`), on the bottom floor, where the gateway
and the operator read it without any key; signing and verifying live here, with the keys.

`verify_download` is the device's gate: a model is activated only if a trusted key signed a release record
for exactly these bytes. Any failure raises `ReleaseRejected` with a `reason` the device reports upward
(the gateway counts activation failures by it, and a rollout's analysis sees them).
"""

from __future__ import annotations

from enum import StrEnum

from fedfleet.models.artifact import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    ArtifactError,
    ModelArtifact,
    ReleaseRecord,
    SignedRelease,
    decode,
    digest_of,
)
from fedfleet.security.signing import SignatureError, SignatureProblem, SigningKey, TrustedKeys


class RejectionReason(StrEnum):
    DIGEST_MISMATCH = "digest_mismatch"  # the bytes are not the ones the record names (tampered or corrupt)
    SIZE_MISMATCH = "size_mismatch"  # truncated or padded download
    UNTRUSTED_KEY = "untrusted_key"  # signed by a key this device does not trust
    BAD_SIGNATURE = "bad_signature"  # the signature does not verify (forged or altered record)
    MALFORMED_ARTIFACT = "malformed_artifact"  # signed and intact, but not a valid artifact
    ARCHITECTURE_MISMATCH = "architecture_mismatch"  # the artifact is not the architecture the record promises


class ReleaseRejected(Exception):
    """A downloaded model the device must not activate. `reason` is what it reports."""

    def __init__(self, reason: RejectionReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def sign_release(record: ReleaseRecord, key: SigningKey) -> SignedRelease:
    if record.key_id != key.key_id:
        raise ValueError(f"release.key_id is {record.key_id}, but the signing key is {key.key_id}")
    return SignedRelease(record, key.sign(record.signing_message()))


def verify_release(signed: SignedRelease, trusted: TrustedKeys) -> None:
    """Return if a trusted key signed the record; raise SignatureError otherwise."""
    trusted.verify(signed.record.key_id, signed.record.signing_message(), signed.signature)


def verify_download(
    data: bytes,
    signed: SignedRelease,
    trusted: TrustedKeys,
    max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
) -> ModelArtifact:
    """The artifact in `data`, if `signed` is a trusted release of exactly these bytes.

    The signature is checked first: until it verifies, the record's size and digest are claims of unknown
    origin, and a failure is best reported as what it is (an untrusted or forged record) rather than as a
    mismatch with numbers an attacker chose. Then the size (cheap), the digest, and last the decoding.
    """
    record = signed.record
    try:
        verify_release(signed, trusted)
    except SignatureError as exc:
        reason = (
            RejectionReason.UNTRUSTED_KEY
            if exc.problem is SignatureProblem.UNTRUSTED_KEY
            else RejectionReason.BAD_SIGNATURE
        )
        raise ReleaseRejected(reason, f"release of {record.version}: {exc.message}") from None
    if not isinstance(data, bytes):
        raise ReleaseRejected(RejectionReason.MALFORMED_ARTIFACT, "the download must be bytes")
    if len(data) != record.size:
        raise ReleaseRejected(
            RejectionReason.SIZE_MISMATCH, f"downloaded {len(data)} bytes, the release says {record.size}"
        )
    actual = digest_of(data)
    if actual != record.digest:
        raise ReleaseRejected(
            RejectionReason.DIGEST_MISMATCH, f"downloaded bytes have digest {actual}, the release says {record.digest}"
        )
    try:
        artifact = decode(data, max_bytes)
    except ArtifactError as exc:
        raise ReleaseRejected(RejectionReason.MALFORMED_ARTIFACT, str(exc)) from None
    if artifact.architecture != record.architecture:
        raise ReleaseRejected(
            RejectionReason.ARCHITECTURE_MISMATCH,
            f"the artifact is a {artifact.architecture}, the release says {record.architecture}",
        )
    return artifact

"""Signing a release and a device's check of a download against it: each way a download can be wrong is
refused with the reason the device reports."""

from __future__ import annotations

import dataclasses

import pytest

from artifact_samples import sample_bytes
from fedfleet.models.artifact import MAGIC, ReleaseRecord, SignedRelease, decode, digest_of
from fedfleet.security.releases import (
    RejectionReason,
    ReleaseRejected,
    sign_release,
    verify_download,
    verify_release,
)
from fedfleet.security.signing import SignatureError, SignatureProblem, SigningKey, TrustedKeys


def _record(data: bytes, key: SigningKey, **change: object) -> ReleaseRecord:
    record = ReleaseRecord(
        rollout="fleet-a/mnist",
        revision=1,
        version=digest_of(data),
        digest=digest_of(data),
        size=len(data),
        architecture="logistic",
        key_id=key.key_id,
        issued_at="2026-11-29T18:00:00Z",
    )
    return dataclasses.replace(record, **change)  # type: ignore[arg-type]


def _reason(data: bytes, signed: SignedRelease, trusted: TrustedKeys) -> RejectionReason:
    with pytest.raises(ReleaseRejected) as caught:
        verify_download(data, signed, trusted)
    return caught.value.reason


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def test_a_signed_release_of_the_downloaded_bytes_is_activated(key: SigningKey) -> None:
    data = sample_bytes(seed=1)
    signed = sign_release(_record(data, key), key)
    artifact = verify_download(data, signed, TrustedKeys([key.public()]))
    assert artifact.header == decode(data).header
    # It survives the trip through a resource's status and the gateway's wire form.
    again = SignedRelease.from_dict(signed.to_dict())
    verify_download(data, again, TrustedKeys([key.public()]))
    wire = SignedRelease(ReleaseRecord.from_canonical_bytes(signed.record.canonical_bytes()), signed.signature)
    verify_download(data, wire, TrustedKeys([key.public()]))


def test_a_tampered_byte_is_a_digest_mismatch(key: SigningKey) -> None:
    data = sample_bytes(seed=1)
    signed = sign_release(_record(data, key), key)
    for position in (0, 20, len(data) - 1):
        tampered = bytearray(data)
        tampered[position] ^= 0x40
        assert _reason(bytes(tampered), signed, TrustedKeys([key.public()])) is RejectionReason.DIGEST_MISMATCH


def test_a_truncated_or_padded_download_is_a_size_mismatch(key: SigningKey) -> None:
    data = sample_bytes(seed=1)
    signed = sign_release(_record(data, key), key)
    trusted = TrustedKeys([key.public()])
    assert _reason(data[:-1], signed, trusted) is RejectionReason.SIZE_MISMATCH
    assert _reason(data + b"\x00", signed, trusted) is RejectionReason.SIZE_MISMATCH


def test_a_release_signed_by_another_key_is_untrusted(key: SigningKey) -> None:
    data = sample_bytes(seed=1)
    attacker = SigningKey.generate()
    signed = sign_release(_record(data, attacker), attacker)
    assert _reason(data, signed, TrustedKeys([key.public()])) is RejectionReason.UNTRUSTED_KEY


def test_a_flipped_signature_is_a_bad_signature(key: SigningKey) -> None:
    data = sample_bytes(seed=1)
    signed = sign_release(_record(data, key), key)
    flipped = bytearray(signed.signature)
    flipped[10] ^= 0x01
    assert _reason(data, SignedRelease(signed.record, bytes(flipped)), TrustedKeys([key.public()])) is (
        RejectionReason.BAD_SIGNATURE
    )
    short = SignedRelease(signed.record, signed.signature[:32])
    assert _reason(data, short, TrustedKeys([key.public()])) is RejectionReason.BAD_SIGNATURE


def test_a_record_altered_after_signing_is_a_bad_signature_even_if_it_matches_the_bytes(key: SigningKey) -> None:
    # An attacker who swaps the artifact also rewrites digest and size in the record to match; the signature
    # over the original record then fails, and that — not a mismatch — is what the device reports.
    good, evil = sample_bytes(seed=1), sample_bytes(seed=2)
    signed = sign_release(_record(good, key), key)
    forged = SignedRelease(
        dataclasses.replace(signed.record, version=digest_of(evil), digest=digest_of(evil), size=len(evil)),
        signed.signature,
    )
    assert _reason(evil, forged, TrustedKeys([key.public()])) is RejectionReason.BAD_SIGNATURE
    other_rollout = SignedRelease(dataclasses.replace(signed.record, rollout="fleet-a/other"), signed.signature)
    assert _reason(good, other_rollout, TrustedKeys([key.public()])) is RejectionReason.BAD_SIGNATURE


def test_signed_intact_bytes_that_are_not_an_artifact_are_malformed(key: SigningKey) -> None:
    data = MAGIC + b"\x00\x00\x00\x02{}" + bytes(40)
    signed = sign_release(_record(data, key), key)
    assert _reason(data, signed, TrustedKeys([key.public()])) is RejectionReason.MALFORMED_ARTIFACT


def test_an_artifact_of_another_architecture_than_the_release_promises_is_refused(key: SigningKey) -> None:
    data = sample_bytes(seed=1)  # a logistic model
    signed = sign_release(_record(data, key, architecture="cnn"), key)
    assert _reason(data, signed, TrustedKeys([key.public()])) is RejectionReason.ARCHITECTURE_MISMATCH


def test_verify_release_alone_checks_the_record(key: SigningKey) -> None:
    data = sample_bytes(seed=1)
    signed = sign_release(_record(data, key), key)
    verify_release(signed, TrustedKeys([key.public()]))
    with pytest.raises(SignatureError) as caught:
        verify_release(signed, TrustedKeys([SigningKey.generate().public()]))
    assert caught.value.problem is SignatureProblem.UNTRUSTED_KEY


def test_signing_with_a_key_other_than_the_record_names_is_a_mistake(key: SigningKey) -> None:
    data = sample_bytes(seed=1)
    with pytest.raises(ValueError, match="signing key is"):
        sign_release(_record(data, key), SigningKey.generate())


def test_the_signature_covers_the_release_context_not_just_the_json(key: SigningKey) -> None:
    # A signature the key made over the bare JSON (say, for some other purpose) is not a release signature.
    data = sample_bytes(seed=1)
    record = _record(data, key)
    bare = SignedRelease(record, key.sign(record.canonical_bytes()))
    assert _reason(data, bare, TrustedKeys([key.public()])) is RejectionReason.BAD_SIGNATURE

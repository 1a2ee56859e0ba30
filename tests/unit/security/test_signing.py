"""Ed25519 keys and the trust set: what verifies, what is refused, and with which problem."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedfleet.security.signing import (
    MAX_TRUSTED_KEYS,
    KeyFormatError,
    PublicKey,
    SignatureError,
    SignatureProblem,
    SigningKey,
    TrustedKeys,
)

MESSAGE = b"release sha256:abc for rollout demo/mnist"


def _problem(trusted: TrustedKeys, key_id: str, message: bytes, signature: bytes) -> SignatureProblem:
    with pytest.raises(SignatureError) as caught:
        trusted.verify(key_id, message, signature)
    return caught.value.problem


def test_a_trusted_key_verifies_what_it_signed() -> None:
    key = SigningKey.generate()
    trusted = TrustedKeys([key.public()])
    trusted.verify(key.key_id, MESSAGE, key.sign(MESSAGE))  # no exception: accepted


def test_the_key_id_is_the_start_of_the_sha256_of_the_raw_public_key() -> None:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = SigningKey(private)
    assert key.key_id == "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
    assert key.public().raw == raw and key.public().key_id == key.key_id
    assert SigningKey.generate().key_id != key.key_id


def test_pem_round_trip_is_unencrypted_pkcs8_and_keeps_the_key() -> None:
    key = SigningKey.generate()
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, not "ENCRYPTED PRIVATE KEY"
    loaded = SigningKey.from_pem(pem)
    assert loaded.key_id == key.key_id
    TrustedKeys([key.public()]).verify(key.key_id, MESSAGE, loaded.sign(MESSAGE))


def test_the_repr_of_a_signing_key_names_it_without_revealing_it() -> None:
    key = SigningKey.generate()
    secret_lines = key.to_pem().decode().splitlines()[1:-1]
    shown = repr(key) + str(key)
    assert key.key_id in shown
    assert not any(line in shown for line in secret_lines)


@pytest.mark.parametrize(
    ("pem", "rule"),
    [
        (b"not a key", "not a PKCS8 PEM private key"),
        (b"", "not a PKCS8 PEM private key"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "expected an Ed25519 private key",
        ),
        (
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"hunter22"),
            ),
            "encrypted",
        ),
        (b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 8192, "far below"),
    ],
    ids=["garbage", "empty", "ec-key", "encrypted", "oversized"],
)
def test_from_pem_refuses_what_is_not_an_unencrypted_ed25519_key(pem: bytes, rule: str) -> None:
    with pytest.raises(KeyFormatError, match=rule):
        SigningKey.from_pem(pem)


def test_public_key_text_round_trips_and_tolerates_a_trailing_newline() -> None:
    public = SigningKey.generate().public()
    text = public.to_text()
    assert text.startswith("ed25519:") and base64.b64decode(text.removeprefix("ed25519:")) == public.raw
    assert PublicKey.from_text(text) == public
    assert PublicKey.from_text(f"  {text}\n") == public


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ed25519:",
        "rsa:" + base64.b64encode(bytes(32)).decode(),
        "ed25519:" + base64.b64encode(bytes(31)).decode(),  # too short
        "ed25519:" + base64.b64encode(bytes(33)).decode(),  # too long
        "ed25519:" + base64.b64encode(bytes(32)).decode().rstrip("="),  # padding dropped
        "ed25519:" + base64.urlsafe_b64encode(b"\xff" * 32).decode(),  # the URL-safe alphabet
        "ed25519:AAAA AAAA",
        "ed25519:" + "A" * 500,
    ],
)
def test_public_key_text_must_be_ed25519_and_canonical_base64_of_32_bytes(text: str) -> None:
    with pytest.raises(KeyFormatError, match="public key"):
        PublicKey.from_text(text)


def test_a_key_the_device_does_not_trust_is_refused_as_untrusted() -> None:
    trusted_key, other = SigningKey.generate(), SigningKey.generate()
    trusted = TrustedKeys([trusted_key.public()])
    problem = _problem(trusted, other.key_id, MESSAGE, other.sign(MESSAGE))
    assert problem is SignatureProblem.UNTRUSTED_KEY


def test_a_flipped_signature_bit_or_an_altered_message_is_a_bad_signature() -> None:
    key = SigningKey.generate()
    trusted = TrustedKeys([key.public()])
    signature = key.sign(MESSAGE)
    for index in (0, 31, 63):
        flipped = bytearray(signature)
        flipped[index] ^= 0x01
        assert _problem(trusted, key.key_id, MESSAGE, bytes(flipped)) is SignatureProblem.BAD_SIGNATURE
    assert _problem(trusted, key.key_id, MESSAGE + b"!", signature) is SignatureProblem.BAD_SIGNATURE


def test_another_keys_signature_under_a_trusted_key_id_is_a_bad_signature() -> None:
    trusted_key, attacker = SigningKey.generate(), SigningKey.generate()
    trusted = TrustedKeys([trusted_key.public()])
    problem = _problem(trusted, trusted_key.key_id, MESSAGE, attacker.sign(MESSAGE))
    assert problem is SignatureProblem.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("key_id", "signature_length"),
    [("ed25519:ABCDEF0123456789", 64), ("ed25519:0123", 64), ("rsa:0123456789abcdef", 64), ("", 64)],
)
def test_a_key_id_of_another_form_is_malformed(key_id: str, signature_length: int) -> None:
    trusted = TrustedKeys([SigningKey.generate().public()])
    assert _problem(trusted, key_id, MESSAGE, bytes(signature_length)) is SignatureProblem.MALFORMED


@pytest.mark.parametrize("length", [0, 63, 65, 4096])
def test_a_signature_of_the_wrong_length_is_malformed(length: int) -> None:
    key = SigningKey.generate()
    trusted = TrustedKeys([key.public()])
    assert _problem(trusted, key.key_id, MESSAGE, bytes(length)) is SignatureProblem.MALFORMED


def test_rotation_trusts_old_and_new_then_drops_the_old_key() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    during = TrustedKeys.from_texts([old.public().to_text(), new.public().to_text()])
    during.verify(old.key_id, MESSAGE, old.sign(MESSAGE))
    during.verify(new.key_id, MESSAGE, new.sign(MESSAGE))
    assert during.key_ids == {old.key_id, new.key_id} and len(during) == 2

    after = TrustedKeys.from_texts([new.public().to_text()])
    after.verify(new.key_id, MESSAGE, new.sign(MESSAGE))
    assert _problem(after, old.key_id, MESSAGE, old.sign(MESSAGE)) is SignatureProblem.UNTRUSTED_KEY


def test_a_trust_set_must_name_between_one_and_the_maximum_number_of_keys() -> None:
    with pytest.raises(KeyFormatError, match="at least one"):
        TrustedKeys([])
    too_many = [SigningKey.generate().public().to_text() for _ in range(MAX_TRUSTED_KEYS + 1)]
    with pytest.raises(KeyFormatError, match=f"more than {MAX_TRUSTED_KEYS}"):
        TrustedKeys.from_texts(too_many)
    with pytest.raises(KeyFormatError, match=r"trusted keys\[1\]"):
        TrustedKeys.from_texts([too_many[0], "ed25519:nope"])


def test_the_same_key_listed_twice_is_trusted_once() -> None:
    key = SigningKey.generate()
    trusted = TrustedKeys([key.public(), PublicKey.from_text(key.public().to_text())])
    assert len(trusted) == 1 and key.key_id in trusted and list(trusted) == [key.public()]

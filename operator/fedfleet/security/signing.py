"""Ed25519 signatures on model releases: the operator signs, devices verify against the key ids they trust.

Public-key signatures (not the HMAC of `tokens.py`) because the verifiers are many and untrusted: every
device must be able to check a release, and none of them — nor the gateway that relays releases — may be
able to make one. The private key lives in a Kubernetes Secret the operator reads; devices get public keys
as text (a ConfigMap, a flag).

Rotation works on key ids: devices trust a set of them, so a fleet first trusts old and new, the operator
switches to signing with the new key, and the old one is dropped. A key id names a public key
("ed25519:" + the first 16 hex digits of SHA-256 of its 32 raw bytes); verification always uses the whole
key, so the short id only needs to tell a handful of trusted keys apart.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedfleet.models.canonical import b64decode, b64encode

ALGORITHM = "ed25519"
RAW_PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
#: A PKCS8 PEM Ed25519 key is 119 bytes; anything much longer is not one, and is not worth parsing.
MAX_PEM_BYTES = 4096
#: Rotation needs two keys at a time; a few more leave room for overlap, and the bound caps the work a
#: hostile trust list can cause.
MAX_TRUSTED_KEYS = 16
#: "ed25519:" + 16 hex digits.
_KEY_ID = re.compile(r"ed25519:[0-9a-f]{16}")


class KeyFormatError(ValueError):
    """A key (PEM or text) that is not an Ed25519 key in the expected encoding."""


class SignatureProblem(StrEnum):
    UNTRUSTED_KEY = "untrusted_key"  # signed by a key the verifier does not trust (or a well-formed unknown id)
    BAD_SIGNATURE = "bad_signature"  # the trusted key did not sign this message
    MALFORMED = "malformed"  # not a signature or key id of this scheme at all


class SignatureError(Exception):
    """The signature is refused. `problem` says why; callers report it, they never retry it."""

    def __init__(self, problem: SignatureProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


def key_id_of(raw_public_key: bytes) -> str:
    return f"{ALGORITHM}:{hashlib.sha256(raw_public_key).hexdigest()[:16]}"


def is_key_id(text: object) -> bool:
    return isinstance(text, str) and _KEY_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class PublicKey:
    """A verification key: its 32 raw bytes. Text form "ed25519:<base64 of the raw bytes>"."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != RAW_PUBLIC_KEY_BYTES:
            raise KeyFormatError(f"an Ed25519 public key is {RAW_PUBLIC_KEY_BYTES} raw bytes")
        try:
            self._verifier()
        except ValueError:
            raise KeyFormatError("not an Ed25519 public key") from None

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def to_text(self) -> str:
        return f"{ALGORITHM}:{b64encode(self.raw)}"

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """Parse "ed25519:<base64>"; surrounding whitespace (a trailing newline in a ConfigMap) is ignored."""
        if not isinstance(text, str):
            raise KeyFormatError("a public key must be text 'ed25519:<base64 of 32 bytes>'")
        stripped = text.strip()
        prefix = f"{ALGORITHM}:"
        if len(stripped) > 128 or not stripped.startswith(prefix):
            raise KeyFormatError("a public key must be text 'ed25519:<base64 of 32 bytes>'")
        body = stripped[len(prefix) :]
        try:
            raw = b64decode(body)
        except ValueError:
            raise KeyFormatError("public key: the part after 'ed25519:' is not canonical base64") from None
        if len(raw) != RAW_PUBLIC_KEY_BYTES:
            raise KeyFormatError(f"public key: {len(raw)} bytes, an Ed25519 public key has {RAW_PUBLIC_KEY_BYTES}")
        return cls(raw)

    def _verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)


class SigningKey:
    """An Ed25519 private key. Its repr shows the key id only, so logging one never leaks it."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._public = PublicKey(
            private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def public(self) -> PublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def to_pem(self) -> bytes:
        """PKCS8 PEM, unencrypted: it is stored in a Kubernetes Secret, whose access control is the protection."""
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        if not isinstance(data, bytes):
            raise KeyFormatError("signing key: expected PEM bytes")
        if len(data) > MAX_PEM_BYTES:
            raise KeyFormatError(f"signing key: {len(data)} bytes of PEM, an Ed25519 key is far below {MAX_PEM_BYTES}")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            # cryptography's way of saying the PEM is encrypted and needs a password.
            raise KeyFormatError("signing key: the PEM is encrypted; store it unencrypted (PKCS8)") from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFormatError("signing key: not a PKCS8 PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"signing key: a {type(key).__name__}, expected an Ed25519 private key")
        return cls(key)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"


class TrustedKeys:
    """The public keys a device accepts releases from, by key id."""

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        by_id: dict[str, PublicKey] = {}
        for key in keys:
            if not isinstance(key, PublicKey):
                raise KeyFormatError(f"trusted keys: expected PublicKey, got {type(key).__name__}")
            by_id[key.key_id] = key
            if len(by_id) > MAX_TRUSTED_KEYS:
                raise KeyFormatError(f"trusted keys: more than {MAX_TRUSTED_KEYS} keys")
        if not by_id:
            # Trusting nothing would refuse every release: certainly a configuration mistake.
            raise KeyFormatError("trusted keys: at least one public key is needed")
        self._keys = by_id

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> TrustedKeys:
        keys = []
        for index, text in enumerate(texts):
            if index >= MAX_TRUSTED_KEYS:
                raise KeyFormatError(f"trusted keys: more than {MAX_TRUSTED_KEYS} keys")
            try:
                keys.append(PublicKey.from_text(text))
            except KeyFormatError as exc:
                raise KeyFormatError(f"trusted keys[{index}]: {exc}") from None
        return cls(keys)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, key_id: str, message: bytes, signature: bytes) -> None:
        """Return if a trusted key `key_id` signed `message`; raise SignatureError otherwise."""
        if not is_key_id(key_id):
            raise SignatureError(SignatureProblem.MALFORMED, "key id is not 'ed25519:' and 16 lowercase hex digits")
        if not isinstance(message, bytes):
            raise SignatureError(SignatureProblem.MALFORMED, "the signed message must be bytes")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            size = len(signature) if isinstance(signature, bytes) else type(signature).__name__
            raise SignatureError(
                SignatureProblem.MALFORMED, f"an Ed25519 signature is {SIGNATURE_BYTES} bytes, got {size}"
            )
        key = self._keys.get(key_id)
        if key is None:
            trusted = ", ".join(sorted(self._keys))
            raise SignatureError(SignatureProblem.UNTRUSTED_KEY, f"key {key_id} is not trusted (trusted: {trusted})")
        try:
            key._verifier().verify(signature, message)
        except InvalidSignature:
            raise SignatureError(SignatureProblem.BAD_SIGNATURE, f"the signature is not by key {key_id}") from None

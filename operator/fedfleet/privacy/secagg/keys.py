"""Key agreement, key derivation and share sealing for secure aggregation (``cryptography`` only).

Every derived value is bound to the round (its public ``session`` seed as HKDF salt, and ``round_id``)
and to the pair of clients, so nothing carries over between rounds or pairs:

* share key   = HKDF(X25519(c_u, c_v), info = "share-key" ‖ round ‖ min(u,v) ‖ max(u,v)) — AES-256-GCM key
* mask seed   = HKDF(X25519(s_u, s_v), info = "mask-seed" ‖ round ‖ min(u,v) ‖ max(u,v)) — PRG seed
* sealed share: AES-GCM with a random 96-bit nonce and associated data "share" ‖ round ‖ sender ‖ receiver,
  so the server cannot redirect a share to another receiver or replay it in another round.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
COMMITMENT_BYTES = 32
_DOMAIN = b"fedfleet/secagg/v1/"
# Any valid private key works for probing a public key; a fixed one keeps the check deterministic.
_PROBE_KEY = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


class CryptoError(ValueError):
    """A public key, private key or sealed share is malformed or does not authenticate."""


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def load_private_key(raw: bytes) -> X25519PrivateKey:
    if len(raw) != KEY_BYTES:
        raise CryptoError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def load_public_key(raw: bytes, *, probe: bool = True) -> X25519PublicKey:
    """Parse a peer's public key, refusing a wrong length and (with ``probe``) the low-order points, whose
    shared secret is all zeros and so known to everyone. Without ``probe`` the check is left to the first
    agreement with the key, which fails the same way; that saves one scalar multiplication per key."""
    if len(raw) != KEY_BYTES:
        raise CryptoError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(raw)}")
    key = X25519PublicKey.from_public_bytes(raw)
    if probe:
        try:
            _PROBE_KEY.exchange(key)
        except ValueError as exc:
            raise CryptoError("X25519 public key is a low-order point") from exc
    return key


def _derive(secret: bytes, purpose: bytes, session: bytes, round_id: int, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    info = _DOMAIN + purpose + struct.pack(">QII", round_id, lo, hi)
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=session, info=info).derive(secret)


def _agree(own: X25519PrivateKey, peer: bytes | X25519PublicKey) -> bytes:
    peer_key = peer if isinstance(peer, X25519PublicKey) else load_public_key(peer, probe=False)
    try:
        return own.exchange(peer_key)
    except ValueError as exc:
        raise CryptoError("X25519 agreement produced the all-zero secret") from exc


def share_key(
    own: X25519PrivateKey,
    peer: bytes | X25519PublicKey,
    *,
    session: bytes,
    round_id: int,
    own_id: int,
    peer_id: int,
) -> bytes:
    return _derive(_agree(own, peer), b"share-key", session, round_id, own_id, peer_id)


def mask_seed(
    own: X25519PrivateKey,
    peer: bytes | X25519PublicKey,
    *,
    session: bytes,
    round_id: int,
    own_id: int,
    peer_id: int,
) -> bytes:
    return _derive(_agree(own, peer), b"mask-seed", session, round_id, own_id, peer_id)


def _share_ad(round_id: int, sender: int, receiver: int) -> bytes:
    return _DOMAIN + b"share" + struct.pack(">QII", round_id, sender, receiver)


def seal(key: bytes, plaintext: bytes, *, round_id: int, sender: int, receiver: int) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _share_ad(round_id, sender, receiver))


def open_sealed(key: bytes, sealed: bytes, *, round_id: int, sender: int, receiver: int) -> bytes:
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError(f"sealed share of {len(sealed)} bytes is shorter than nonce and tag")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _share_ad(round_id, sender, receiver))
    except InvalidTag as exc:
        raise CryptoError("sealed share does not authenticate") from exc


def sealed_length(plaintext_length: int) -> int:
    return NONCE_BYTES + plaintext_length + TAG_BYTES


def self_mask_commitment(seed: bytes, *, session: bytes, round_id: int, client_id: int) -> bytes:
    """SHA-256 binding of a self-mask seed. The seed is 256 uniform bits, so the hash hides it; the server
    uses it to recognise a correct reconstruction when some revealed shares are false."""
    header = _DOMAIN + b"self-mask-commitment" + struct.pack(">QI", round_id, client_id)
    return hashlib.sha256(header + session + seed).digest()

"""Masks: pseudorandom vectors in Z_{2^k} expanded from 256-bit seeds with an AES-256-CTR keystream.

The seed is the AES key and the counter starts at zero; every seed is used for exactly one mask (self-mask
seeds are fresh per round, pairwise seeds are derived per round and pair), so a fixed IV is safe. Element i
is the little-endian word i of the keystream reduced mod 2^k; the low k bits of uniform bits are uniform.

Pairwise masks cancel in the sum by a sign convention: client u adds PRG(s_uv) if u < v and subtracts it
if u > v.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from . import ring
from .ring import U64Vector

SEED_BYTES = 32
_ZERO_IV = bytes(16)


def _keystream_words(seed: bytes, length: int, modulus_bits: int) -> NDArray[np.unsignedinteger]:
    """``length`` raw keystream words of the ring's wire width (not yet reduced mod 2^k)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise ValueError(f"mask length must be >= 0, got {length}")
    width = ring.word_bytes(modulus_bits)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    stream = encryptor.update(bytes(length * width))
    encryptor.finalize()  # CTR has no tail; finalize only closes the context
    return np.frombuffer(stream, dtype=f"<u{width}")


def expand_mask(seed: bytes, length: int, modulus_bits: int) -> U64Vector:
    """The mask PRG(seed): ``length`` uniform elements of Z_{2^modulus_bits}."""
    return ring.reduce(_keystream_words(seed, length, modulus_bits).astype(np.uint64), modulus_bits)


def pairwise_sign(own: int, peer: int) -> int:
    """+1 if own < peer else −1: the two ends of a pair add opposite masks."""
    if own == peer:
        raise ValueError("a client has no pairwise mask with itself")
    return 1 if own < peer else -1


def add_mask(acc: U64Vector, seed: bytes, sign: int, modulus_bits: int) -> None:
    """acc ← acc ± PRG(seed), left unreduced (reduce with :func:`ring.reduce` after the last mask)."""
    words = _keystream_words(seed, acc.size, modulus_bits)
    if sign > 0:
        np.add(acc, words, out=acc)
    else:
        np.subtract(acc, words, out=acc)


def add_pairwise_mask(acc: U64Vector, seed: bytes, own: int, peer: int, modulus_bits: int) -> None:
    add_mask(acc, seed, pairwise_sign(own, peer), modulus_bits)

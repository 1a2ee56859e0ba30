"""Vectors over the ring Z_{2^k} (1 <= k <= 62) held in uint64 numpy arrays.

uint64 arithmetic wraps modulo 2^64 and 2^k divides 2^64, so sums and differences may be accumulated
unreduced and reduced once with a bit mask: (a ± b) mod 2^k = ((a ± b) mod 2^64) & (2^k − 1).
On the wire a vector is little-endian words of the narrowest width of 1, 2, 4 or 8 bytes that holds k bits.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

MAX_MODULUS_BITS = 62

U64Vector = NDArray[np.uint64]


def check_modulus_bits(bits: int) -> int:
    if not 1 <= bits <= MAX_MODULUS_BITS:
        raise ValueError(f"modulus_bits must be in 1..{MAX_MODULUS_BITS}, got {bits}")
    return bits


def mask_of(bits: int) -> np.uint64:
    return np.uint64((1 << check_modulus_bits(bits)) - 1)


def word_bytes(bits: int) -> int:
    """Bytes per element on the wire (and per element of mask keystream)."""
    check_modulus_bits(bits)
    for width in (1, 2, 4):
        if bits <= 8 * width:
            return width
    return 8


def reduce(vector: U64Vector, bits: int) -> U64Vector:
    """Reduce in place modulo 2^bits and return the same array."""
    np.bitwise_and(vector, mask_of(bits), out=vector)
    return vector


def in_ring(vector: U64Vector, bits: int) -> bool:
    return vector.size == 0 or int(vector.max()) <= int(mask_of(bits))


def encode(vector: U64Vector, bits: int) -> bytes:
    if not in_ring(vector, bits):
        raise ValueError(f"vector has values outside Z_2^{bits}")
    return vector.astype(f"<u{word_bytes(bits)}").tobytes()


def decode_words(data: bytes, length: int, bits: int) -> NDArray[np.unsignedinteger]:
    """A read-only view of an encoded vector in its wire width (no copy: a server holding many inputs
    keeps them at their wire size), refusing a wrong length or values outside the ring."""
    width = word_bytes(bits)
    if len(data) != length * width:
        raise ValueError(f"expected {length} elements of {width} bytes ({length * width} bytes), got {len(data)}")
    words = np.frombuffer(data, dtype=f"<u{width}")
    if words.size and int(words.max()) > (1 << bits) - 1:
        raise ValueError(f"vector has values outside Z_2^{bits}")
    return words


def decode(data: bytes, length: int, bits: int) -> U64Vector:
    """Parse an encoded vector into uint64, refusing a wrong length or values outside the ring."""
    return decode_words(data, length, bits).astype(np.uint64)

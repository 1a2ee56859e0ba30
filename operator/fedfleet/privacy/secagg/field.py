"""Arithmetic in a prime field GF(p): the ground Shamir sharing stands on.

The default modulus is the Mersenne prime 2^521 - 1, so any secret of up to 65 bytes (in particular the
32-byte seeds and X25519 private keys of secure aggregation) is one field element.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

MERSENNE_521 = 2**521 - 1


class FieldError(ValueError):
    """A value or encoding that is no element of the field, a modulus that cannot be prime, or interpolation
    points that share an x coordinate."""


@dataclass(frozen=True)
class PrimeField:
    """GF(p) for a prime ``modulus``. Primality is the caller's promise (tested for the default)."""

    modulus: int

    def __post_init__(self) -> None:
        if self.modulus < 2:
            raise FieldError(f"modulus must be a prime >= 2, got {self.modulus}")

    @property
    def element_bytes(self) -> int:
        """Width of the fixed-size big-endian encoding of an element."""
        return (self.modulus.bit_length() + 7) // 8

    @property
    def secret_bytes(self) -> int:
        """Longest byte string that always encodes to an element (its value is < 2^(8·len) <= p)."""
        return (self.modulus.bit_length() - 1) // 8

    def check(self, value: int) -> int:
        if not 0 <= value < self.modulus:
            raise FieldError(f"{value} is not an element of GF({self.modulus})")
        return value

    def eval_poly(self, coefficients: Sequence[int], x: int) -> int:
        """f(x) for f = Σ coefficients[i]·x^i, by Horner's rule."""
        p = self.modulus
        acc = 0
        for c in reversed(coefficients):
            acc = (acc * x + c) % p
        return acc

    def lagrange_weights(self, xs: Sequence[int], at: int = 0) -> list[int]:
        """Weights w_i with f(at) = Σ w_i·f(x_i) for every polynomial f of degree < len(xs).

        w_i = Π_{j≠i} (at − x_j) / (x_i − x_j). The x_i must be distinct field elements. Cached, because
        a server rebuilding many secrets mostly interpolates over the same set of holders.
        """
        return list(_lagrange_weights(self.modulus, tuple(xs), at))

    def interpolate(self, points: Sequence[tuple[int, int]], at: int = 0) -> int:
        """The value at ``at`` of the polynomial of degree < len(points) through ``points``."""
        weights = self.lagrange_weights([x for x, _ in points], at)
        return sum(w * y for w, (_, y) in zip(weights, points, strict=True)) % self.modulus

    def encode(self, value: int) -> bytes:
        return self.check(value).to_bytes(self.element_bytes, "big")

    def decode(self, data: bytes) -> int:
        if len(data) != self.element_bytes:
            raise FieldError(f"an element is {self.element_bytes} bytes, got {len(data)}")
        return self.check(int.from_bytes(data, "big"))


DEFAULT_FIELD = PrimeField(MERSENNE_521)


@functools.lru_cache(maxsize=4096)
def _lagrange_weights(p: int, xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    if len({x % p for x in xs}) != len(xs):
        raise FieldError("interpolation points must have distinct x coordinates")
    weights = []
    for i, xi in enumerate(xs):
        num = 1
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (at - xj) % p
                den = den * (xi - xj) % p
        weights.append(num * pow(den, -1, p) % p)
    return tuple(weights)

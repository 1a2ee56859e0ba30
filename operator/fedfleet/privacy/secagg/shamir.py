"""Shamir t-of-n secret sharing of byte strings over a prime field.

A secret s becomes the constant term of a random polynomial f of degree t−1; the share at x is (x, f(x)).
Any t shares determine f and so s = f(0) by Lagrange interpolation; any t−1 shares are uniformly
distributed whatever s is, because for each value of s exactly one polynomial passes through them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .field import DEFAULT_FIELD, FieldError, PrimeField


class ShamirError(ValueError):
    """Sharing or reconstruction asked for something impossible (too few shares, clashing x, ...)."""


@dataclass(frozen=True)
class Share:
    x: int
    y: int


def split_secret_at(
    secret: bytes,
    threshold: int,
    xs: Sequence[int],
    *,
    field: PrimeField = DEFAULT_FIELD,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> list[Share]:
    """Shares at the given x coordinates (distinct, in 1..p−1).

    ``randbelow`` draws the t−1 random coefficients; it must be a cryptographic source in production and
    is injectable so that tests can enumerate every polynomial.
    """
    if len(secret) > field.secret_bytes:
        raise ShamirError(f"secret of {len(secret)} bytes exceeds the field's {field.secret_bytes}")
    return split_value(int.from_bytes(secret, "big"), threshold, xs, field=field, randbelow=randbelow)


def split_value(
    value: int,
    threshold: int,
    xs: Sequence[int],
    *,
    field: PrimeField = DEFAULT_FIELD,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> list[Share]:
    """Share a field element: the core of :func:`split_secret_at`."""
    try:
        field.check(value)
    except FieldError as exc:
        raise ShamirError(str(exc)) from exc
    _check_threshold(threshold, len(xs))
    _check_xs(xs, field)
    coefficients = [value] + [randbelow(field.modulus) for _ in range(threshold - 1)]
    return [Share(x, field.eval_poly(coefficients, x)) for x in xs]


def reconstruct_secret(
    shares: Sequence[Share], threshold: int, length: int, *, field: PrimeField = DEFAULT_FIELD
) -> bytes:
    """The ``length``-byte secret from the first ``threshold`` of ``shares``.

    Extra shares are checked only for clashing x coordinates, not for consistency: a wrong share yields a
    wrong secret, so callers that face untrusted shares must verify the result (see the server's
    commitments).
    """
    value = reconstruct_value(shares, threshold, field=field)
    if value >= 1 << (8 * length):
        raise ShamirError(f"reconstructed value does not fit in {length} bytes: the shares are inconsistent")
    return value.to_bytes(length, "big")


def reconstruct_value(shares: Sequence[Share], threshold: int, *, field: PrimeField = DEFAULT_FIELD) -> int:
    """The shared field element f(0), interpolated from the first ``threshold`` shares."""
    if threshold < 1:
        raise ShamirError(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise ShamirError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    _check_xs([s.x for s in shares], field)
    for s in shares:
        try:
            field.check(s.y)
        except FieldError as exc:
            raise ShamirError(f"share at x={s.x}: {exc}") from exc
    return field.interpolate([(s.x, s.y) for s in shares[:threshold]], at=0)


def _check_threshold(threshold: int, num_shares: int) -> None:
    if not 1 <= threshold <= num_shares:
        raise ShamirError(f"threshold must be in 1..{num_shares} (the number of shares), got {threshold}")


def _check_xs(xs: Sequence[int], field: PrimeField) -> None:
    if len(set(xs)) != len(xs):
        raise ShamirError("shares must have distinct x coordinates")
    for x in xs:
        if not 0 < x < field.modulus:
            raise ShamirError(f"x coordinate {x} is not in 1..p−1 (x = 0 would be the secret itself)")

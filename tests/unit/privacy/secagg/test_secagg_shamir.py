"""Shamir sharing: any t shares rebuild the secret; t−1 shares say nothing about it."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfleet.privacy.secagg.field import DEFAULT_FIELD, MERSENNE_521, FieldError, PrimeField
from fedfleet.privacy.secagg.shamir import (
    ShamirError,
    Share,
    reconstruct_secret,
    reconstruct_value,
    split_secret_at,
    split_value,
)


def split_secret(secret: bytes, threshold: int, num_shares: int) -> list[Share]:
    """Shares at x = 1..num_shares (production picks the x coordinates: the devices' indices)."""
    return split_secret_at(secret, threshold, range(1, num_shares + 1))


@st.composite
def sharings(draw: st.DrawFn) -> tuple[bytes, int, int, list[int]]:
    """A secret, t <= n, and an arbitrary ordered choice of at least t of the n shares."""
    n = draw(st.integers(1, 12))
    t = draw(st.integers(1, n))
    secret = draw(st.binary(min_size=0, max_size=DEFAULT_FIELD.secret_bytes))
    order = draw(st.permutations(range(n)))
    k = draw(st.integers(t, n))
    return secret, t, n, list(order[:k])


@settings(max_examples=150, deadline=None)
@given(sharings())
def test_any_t_or_more_shares_reconstruct_the_secret(case: tuple[bytes, int, int, list[int]]) -> None:
    secret, t, n, chosen = case
    shares = split_secret(secret, t, n)
    assert reconstruct_secret([shares[i] for i in chosen], t, len(secret)) == secret


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.data())
def test_shares_at_arbitrary_x_coordinates_reconstruct(secret: bytes, data: st.DataObject) -> None:
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=3, max_size=9, unique=True))
    t = data.draw(st.integers(1, len(xs)))
    shares = split_secret_at(secret, t, xs)
    assert [s.x for s in shares] == xs
    subset = data.draw(st.permutations(shares))[:t]
    assert reconstruct_secret(subset, t, 32) == secret


@settings(max_examples=60, deadline=None)
@given(sharings())
def test_fewer_than_t_shares_are_refused(case: tuple[bytes, int, int, list[int]]) -> None:
    secret, t, n, chosen = case
    shares = split_secret(secret, t, n)
    with pytest.raises(ShamirError, match=f"need {t} shares"):
        reconstruct_secret([shares[i] for i in chosen[: t - 1]], t, len(secret))


def _next(draws: Iterator[int], _bound: int) -> int:
    return next(draws)


@pytest.mark.parametrize(("t", "n"), [(2, 4), (3, 4), (3, 5)])
def test_t_minus_1_shares_are_uniform_whatever_the_secret(t: int, n: int) -> None:
    """In GF(11), enumerate every sharing polynomial of every secret: each choice of t−1 shares takes
    every value tuple exactly once, so its distribution is uniform and independent of the secret."""
    field = PrimeField(11)
    p = field.modulus
    for holders in itertools.combinations(range(n), t - 1):
        for secret in range(p):
            seen: Counter[tuple[int, ...]] = Counter()
            for coefficients in itertools.product(range(p), repeat=t - 1):
                draws = iter(coefficients)
                shares = split_value(secret, t, range(1, n + 1), field=field, randbelow=partial(_next, draws))
                seen[tuple(shares[i].y for i in holders)] += 1
                # The same polynomial's t shares do pin the secret down.
                assert reconstruct_value(shares[:t], t, field=field) == secret
            assert len(seen) == p ** (t - 1) and set(seen.values()) == {1}


def test_duplicate_x_coordinates_are_refused() -> None:
    shares = split_secret(b"secret", 2, 3)
    with pytest.raises(ShamirError, match="distinct x"):
        reconstruct_secret([shares[0], shares[0]], 2, 6)
    with pytest.raises(ShamirError, match="distinct x"):
        split_secret_at(b"secret", 2, [1, 2, 2])


@pytest.mark.parametrize("x", [0, MERSENNE_521, -1])
def test_x_outside_1_to_p_minus_1_is_refused(x: int) -> None:
    with pytest.raises(ShamirError, match="x coordinate"):
        split_secret_at(b"s", 1, [x])


def test_threshold_must_fit_the_number_of_shares() -> None:
    with pytest.raises(ShamirError, match="threshold"):
        split_secret(b"s", 4, 3)
    with pytest.raises(ShamirError, match="threshold"):
        split_secret(b"s", 0, 3)


def test_secret_longer_than_the_field_is_refused() -> None:
    with pytest.raises(ShamirError, match="exceeds"):
        split_secret(bytes(DEFAULT_FIELD.secret_bytes + 1), 1, 1)


def test_share_value_outside_the_field_is_refused() -> None:
    shares = split_secret(b"abc", 2, 2)
    bad = [shares[0], Share(shares[1].x, MERSENNE_521)]
    with pytest.raises(ShamirError, match="x=2"):
        reconstruct_secret(bad, 2, 3)


def test_a_false_share_yields_a_wrong_secret_unless_it_cannot_fit() -> None:
    # Callers facing untrusted shares must verify the result; reconstruction alone cannot tell.
    shares = split_secret(bytes(32), 3, 5)
    small = [shares[0], shares[1], Share(shares[2].x, (shares[2].y + 1) % MERSENNE_521)]
    assert reconstruct_secret(small, 3, 32) != bytes(32)
    large = [shares[0], shares[1], Share(shares[2].x, (shares[2].y + 2**400) % MERSENNE_521)]
    with pytest.raises(ShamirError, match="does not fit"):
        reconstruct_secret(large, 3, 32)


def test_the_default_modulus_is_the_mersenne_prime_2_521_minus_1() -> None:
    # Lucas–Lehmer: M_p (p an odd prime) is prime iff s_{p−2} ≡ 0 with s_0 = 4, s_{i+1} = s_i² − 2.
    assert DEFAULT_FIELD.modulus == 2**521 - 1
    s = 4
    for _ in range(521 - 2):
        s = (s * s - 2) % MERSENNE_521
    assert s == 0
    assert DEFAULT_FIELD.element_bytes == 66 and DEFAULT_FIELD.secret_bytes == 65


def test_field_interpolation_and_encoding() -> None:
    field = PrimeField(101)
    f = [5, 3, 7]  # 5 + 3x + 7x²
    points = [(x, field.eval_poly(f, x)) for x in (2, 9, 40)]
    assert field.interpolate(points, at=0) == 5
    assert field.interpolate(points, at=1) == 15
    assert field.decode(field.encode(100)) == 100
    with pytest.raises(FieldError):
        field.encode(101)
    with pytest.raises(FieldError, match="1 bytes"):
        field.decode(b"\x00\x00")
    with pytest.raises(FieldError, match="not an element"):
        field.decode(b"\xff")

"""Quantization into Z_2^k: error below one step, sums of up to max_clients inputs never wrap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from secagg_support import finest_quantizer

from fedfleet.privacy.secagg.quantize import Quantizer

finite = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 64), elements=finite),
    st.floats(0.01, 5.0),
    st.integers(1, 1000),
    st.sampled_from([16, 32, 62]),
    st.integers(0, 2**32),
)
def test_round_trip_error_is_below_one_step(
    x: np.ndarray, clip: float, max_clients: int, modulus_bits: int, seed: int
) -> None:
    q = finest_quantizer(max_clients, clip, modulus_bits)
    quantized = q.quantize(x, np.random.default_rng(seed))
    assert quantized.dtype == np.uint64 and int(quantized.max()) < q.levels
    back = q.dequantize_sum(quantized, 1)
    clipped = np.clip(x.astype(np.float64), -clip, clip)
    # One step, plus the float64 rounding of values of magnitude ≤ clip (a few ulps).
    assert np.all(np.abs(back - clipped) <= q.step + 4 * np.spacing(np.float64(clip)))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(1, 32), st.sampled_from([20, 32]), st.integers(0, 2**32))
def test_modular_sum_dequantizes_to_the_float_sum(n: int, length: int, modulus_bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    q = finest_quantizer(n, 1.0, modulus_bits)
    xs = rng.uniform(-1.5, 1.5, size=(n, length))
    total = np.zeros(length, dtype=np.uint64)
    for x in xs:
        total = (total + q.quantize(x, rng)) & np.uint64(2**modulus_bits - 1)
    got = q.dequantize_sum(total, n)
    expected = np.clip(xs, -1.0, 1.0).sum(axis=0)
    assert np.all(np.abs(got - expected) <= n * q.step * (1 + 1e-9))


@pytest.mark.parametrize(("n", "modulus_bits"), [(1, 8), (7, 16), (100, 32), (1000, 32), (2**20, 62)])
def test_extreme_inputs_from_max_clients_do_not_wrap(n: int, modulus_bits: int) -> None:
    q = finest_quantizer(n, 2.0, modulus_bits)
    assert n * 2**q.bits <= 2**modulus_bits
    top = q.quantize(np.full(3, 5.0), np.random.default_rng(0))
    bottom = q.quantize(np.full(3, -5.0), np.random.default_rng(0))
    assert np.all(top == q.levels - 1) and np.all(bottom == 0)
    # n·(L−1) computed modulo 2^k equals the integer sum: no wrap.
    total = (top * np.uint64(n)) & np.uint64(2**modulus_bits - 1)
    assert int(total[0]) == n * (q.levels - 1)
    assert np.allclose(q.dequantize_sum(total, n), 2.0 * n)
    assert np.allclose(q.dequantize_sum(bottom, n), -2.0 * n)


def test_stochastic_rounding_is_unbiased() -> None:
    q = Quantizer(clip=1.0, bits=4, modulus_bits=8, max_clients=16)
    x = np.full(200_000, 0.3)
    back = q.dequantize_sum(q.quantize(x, np.random.default_rng(1)), 1)
    assert set(np.unique(back).round(6)) == {round(v, 6) for v in (0.2, 1 / 3)}  # the two nearest grid points
    assert abs(back.mean() - 0.3) < 3 * q.step / np.sqrt(x.size)


def test_the_no_wrap_bound_is_enforced_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"max_clients·2\^bits .* exceeds 2\^modulus_bits"):
        Quantizer(clip=1.0, bits=25, modulus_bits=32, max_clients=129)
    Quantizer(clip=1.0, bits=25, modulus_bits=32, max_clients=128)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clip": 0.0}, "clip"),
        ({"clip": float("inf")}, "clip"),
        ({"bits": 0}, "bits"),
        ({"bits": 49}, "bits"),
        ({"modulus_bits": 63}, "modulus_bits"),
        ({"max_clients": 0}, "max_clients"),
    ],
)
def test_invalid_parameters_name_the_field(kwargs: dict[str, float], field: str) -> None:
    params: dict[str, float] = {"clip": 1.0, "bits": 8, "modulus_bits": 32, "max_clients": 10} | kwargs
    with pytest.raises(ValueError, match=field):
        Quantizer(**params)  # type: ignore[arg-type]


def test_non_finite_inputs_and_impossible_totals_are_refused() -> None:
    q = finest_quantizer(4, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        q.quantize(np.array([0.0, np.nan]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="exceeds"):
        q.dequantize_sum(np.array([4 * (q.levels - 1) + 1], dtype=np.uint64), 4)
    with pytest.raises(ValueError, match="num_clients"):
        q.dequantize_sum(np.zeros(2, dtype=np.uint64), 5)
    with pytest.raises(ValueError, match="uint64"):
        q.dequantize_sum(np.zeros(2, dtype=np.int64), 1)

"""Masks expanded from 256-bit seeds: the AES-256-CTR keystream, uniform in Z_2^k, cancelling in pairs."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy.stats import chisquare  # type: ignore[import-untyped]

from fedfleet.privacy.secagg import masking, ring


def _seed(i: int) -> bytes:
    return bytes([i]) * 32


def test_mask_is_the_aes256_ctr_keystream_from_a_zero_counter() -> None:
    # An independent construction: AES-ECB of the big-endian block counters 0, 1, 2, …
    seed = bytes(range(32))
    blocks = b"".join(i.to_bytes(16, "big") for i in range(8))
    encryptor = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    keystream = encryptor.update(blocks) + encryptor.finalize()
    expected64 = np.frombuffer(keystream, dtype="<u8") & np.uint64(2**62 - 1)
    assert np.array_equal(masking.expand_mask(seed, 16, 62), expected64)
    expected32 = np.frombuffer(keystream, dtype="<u4").astype(np.uint64)
    assert np.array_equal(masking.expand_mask(seed, 32, 32), expected32)


@pytest.mark.parametrize("bits", [1, 7, 16, 20, 32, 33, 62])
def test_mask_is_deterministic_per_seed_and_in_range(bits: int) -> None:
    a = masking.expand_mask(_seed(1), 1000, bits)
    assert a.dtype == np.uint64 and a.shape == (1000,)
    assert int(a.max()) < 2**bits
    assert np.array_equal(a, masking.expand_mask(_seed(1), 1000, bits))
    if bits >= 16:
        assert not np.array_equal(a, masking.expand_mask(_seed(2), 1000, bits))


@pytest.mark.parametrize("bits", [8, 32, 62])
def test_mask_elements_pass_a_chi_square_uniformity_test(bits: int) -> None:
    mask = masking.expand_mask(_seed(3), 100_000, bits)
    top = (mask >> np.uint64(bits - 8)).astype(np.int64)  # top 8 bits → 256 bins
    low = (mask & np.uint64(0xFF)).astype(np.int64)
    for values in (top, low):
        assert chisquare(np.bincount(values, minlength=256)).pvalue > 1e-4


def test_the_chi_square_test_rejects_a_non_uniform_vector() -> None:
    # Positive control for the test above and the one on masked inputs.
    skewed = np.random.default_rng(0).binomial(255, 0.5, 100_000)
    assert chisquare(np.bincount(skewed, minlength=256)).pvalue < 1e-10


def test_pairwise_masks_cancel_in_the_sum() -> None:
    bits, n, m = 32, 6, 500
    seeds = {(u, v): _seed(10 * u + v) for u in range(n) for v in range(u + 1, n)}
    total = np.zeros(m, dtype=np.uint64)
    for u in range(n):
        acc = np.zeros(m, dtype=np.uint64)
        for v in range(n):
            if v != u:
                masking.add_pairwise_mask(acc, seeds[(min(u, v), max(u, v))], u, v, bits)
        ring.reduce(acc, bits)
        assert np.any(acc != 0)
        np.add(total, acc, out=total)
    assert not np.any(ring.reduce(total, bits))


def test_add_mask_then_subtract_restores_the_vector() -> None:
    x = np.arange(100, dtype=np.uint64)
    acc = x.copy()
    masking.add_mask(acc, _seed(5), +1, 20)
    assert not np.array_equal(ring.reduce(acc.copy(), 20), x)
    masking.add_mask(acc, _seed(5), -1, 20)
    assert np.array_equal(ring.reduce(acc, 20), x)


def test_bad_seeds_and_self_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        masking.expand_mask(b"short", 4, 32)
    with pytest.raises(ValueError, match="itself"):
        masking.pairwise_sign(3, 3)
    assert masking.pairwise_sign(1, 2) == 1 and masking.pairwise_sign(2, 1) == -1


@pytest.mark.parametrize("bits", [5, 16, 31, 62])
def test_ring_encoding_round_trips_and_refuses_bad_input(bits: int) -> None:
    v = masking.expand_mask(_seed(7), 50, bits)
    data = ring.encode(v, bits)
    assert len(data) == 50 * ring.word_bytes(bits)
    assert np.array_equal(ring.decode(data, 50, bits), v)
    with pytest.raises(ValueError, match="expected 51 elements"):
        ring.decode(data, 51, bits)
    if bits < 8 * ring.word_bytes(bits):
        too_big = np.full(50, 2**bits, dtype=np.uint64).astype(f"<u{ring.word_bytes(bits)}").tobytes()
        with pytest.raises(ValueError, match="outside"):
            ring.decode(too_big, 50, bits)

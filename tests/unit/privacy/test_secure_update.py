"""Encoding float updates for secure aggregation and decoding their sum: weighting, clipping, the ring size,
and distributed noise that the server can lift back from its residue."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedfleet.privacy.secagg import ring
from fedfleet.privacy.secure_update import UpdateEncoding, plan_encoding
from fl_experiments import make_job


def modular_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v
    return ring.reduce(total, bits)


def spec(**privacy: object):  # type: ignore[no-untyped-def]
    return make_job(
        "enc",
        rounds=5,
        cohort={"clientsPerRound": 10, "minReports": 8},
        simulation={"devices": 50},
        privacy=privacy,
    ).spec


def test_weighted_encodings_sum_to_the_weighted_sum_and_the_summed_weight() -> None:
    encoding = UpdateEncoding(clip_range=1.0, quantization_bits=20, max_clients=10, modulus_bits=24, weight_cap=100)
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-0.5, 0.5, 1000).astype(np.float32) for _ in range(10)]
    examples = [10 * (i + 1) for i in range(10)]
    vectors = [encoding.encode(u, n, rng) for u, n in zip(updates, examples, strict=True)]
    assert all(v.shape == (1001,) for v in vectors)
    decoded = encoding.decode_sum(modular_sum(vectors, 24), 10)
    weights = [min(n, 100) / 100 for n in examples]
    expected = sum(w * u.astype(np.float64) for w, u in zip(weights, updates, strict=True))
    step = encoding.quantizer.step
    assert np.max(np.abs(decoded.total - expected)) < 10 * step
    assert decoded.weight == pytest.approx(sum(weights), abs=10 * step)


def test_examples_above_the_cap_count_as_the_cap() -> None:
    encoding = UpdateEncoding(clip_range=1.0, quantization_bits=16, max_clients=2, modulus_bits=17, weight_cap=50)
    assert encoding.weight(500) == 1.0 and encoding.weight(25) == 0.5 and encoding.weight(-3) == 0.0


def test_l2_clipping_happens_on_the_device_before_quantization() -> None:
    encoding = UpdateEncoding(clip_range=4.0, quantization_bits=20, max_clients=1, modulus_bits=20, l2_clip=1.0)
    update = np.full(100, 1.0, np.float32)  # norm 10
    decoded = encoding.decode_sum(encoding.encode(update, 1, np.random.default_rng(1)), 1)
    assert np.linalg.norm(decoded.total) == pytest.approx(1.0, abs=1e-3)


def test_noisy_sum_is_lifted_around_its_centre_even_where_the_noise_wraps_the_ring() -> None:
    n, bits = 8, 12
    sigma = 400.0  # grid units: noise below zero and above 8·(2^12−1) wraps without the lift
    headroom = math.ceil(math.log2(24 * sigma + 1)) + 1
    modulus = bits + 3 + headroom
    encoding = UpdateEncoding(
        clip_range=1.0,
        quantization_bits=bits,
        max_clients=n,
        modulus_bits=modulus,
        noise_sigma_grid=sigma,
        noise_shares=n,
    )
    rng = np.random.default_rng(2)
    updates = [np.full(20000, -1.0 if i % 2 else 1.0, np.float32) for i in range(n)]  # grid edges: 0 and 2^12−1
    vectors = [encoding.encode(u, 1, rng) for u in updates]
    decoded = encoding.decode_sum(modular_sum(vectors, modulus), n)
    error_grid = decoded.total / encoding.quantizer.step  # the summed noise, in grid units
    assert abs(float(np.mean(error_grid))) < 5 * sigma / math.sqrt(error_grid.size)
    assert float(np.std(error_grid)) == pytest.approx(sigma, rel=0.03)


def test_encode_refuses_non_finite_updates() -> None:
    encoding = UpdateEncoding(clip_range=1.0, quantization_bits=8, max_clients=2, modulus_bits=9)
    with pytest.raises(ValueError, match="NaN or infinite"):
        encoding.encode(np.array([0.0, np.nan], np.float32), 1)


def test_plan_sizes_the_ring_for_the_cohort_and_weights_by_examples() -> None:
    encoding, plan = plan_encoding(spec(secureAggregation={"enabled": True}), dim=100, num_clients=13, max_examples=60)
    assert plan is None
    assert encoding.modulus_bits == 20 + 4  # 13 inputs of 20 bits
    assert encoding.weight_cap == 60 and encoding.l2_clip == 0 and encoding.noise_sigma_grid == 0
    assert encoding.vector_length(100) == 101


def test_plan_with_distributed_dp_clips_adds_noise_and_counts_each_device_once() -> None:
    job_spec = spec(
        secureAggregation={"enabled": True, "quantizationBits": 16},
        differentialPrivacy={"mode": "distributed", "noiseMultiplier": 1.2, "clipNorm": 0.5},
    )
    encoding, plan = plan_encoding(job_spec, dim=1000, num_clients=13, max_examples=60, noise_multiplier=1.2)
    assert plan is not None and plan.min_survivors == 8
    assert encoding.weight_cap == 0 and encoding.vector_length(1000) == 1000
    assert encoding.l2_clip == 0.5 and encoding.noise_shares == 8
    assert encoding.noise_sigma_grid == pytest.approx(plan.total_sigma_grid)
    assert encoding.modulus_bits == 16 + 4 + plan.headroom_bits(13) + 1


def test_plan_for_norm_bounding_clips_to_the_bound() -> None:
    job = make_job(
        "nb",
        rounds=1,
        aggregation={"strategy": "normBounding", "normBound": 0.3},
        privacy={"secureAggregation": {"enabled": True}},
    )
    encoding, _ = plan_encoding(job.spec, dim=10, num_clients=10, max_examples=5)
    assert encoding.l2_clip == 0.3


def test_plan_refuses_a_ring_wider_than_62_bits_naming_the_field() -> None:
    job_spec = spec(
        secureAggregation={"enabled": True, "quantizationBits": 32},
        differentialPrivacy={"mode": "distributed", "noiseMultiplier": 1.0},
    )
    with pytest.raises(ValueError, match=r"privacy.secureAggregation.quantizationBits: 32 bits for 13 devices"):
        plan_encoding(job_spec, dim=1000, num_clients=13, max_examples=1, noise_multiplier=1.0)

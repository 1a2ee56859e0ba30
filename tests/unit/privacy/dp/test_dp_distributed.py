"""Distributed Skellam noise: integer shares whose sum has the target variance, and the ring glue."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.privacy.dp.central import clip_to_norm
from fedfleet.privacy.dp.distributed import (
    MIN_TOTAL_SIGMA_GRID,
    SkellamPlan,
    add_share_mod,
    device_noise_share,
    grid_sensitivity,
    lift_noisy_sum,
    noise_headroom_bits,
    skellam_plan_from_spec,
)
from fedfleet.privacy.secagg.quantize import Quantizer


def _sum_of_shares(n: int, dim: int, sigma: float, seed: int) -> np.ndarray:
    rngs = [np.random.default_rng([seed, i]) for i in range(n)]  # one private generator per device
    total: np.ndarray = np.sum([device_noise_share(dim, sigma, n, rng) for rng in rngs], axis=0)
    return total


def test_shares_are_int64_integers() -> None:
    share = device_noise_share((3, 500), 50.0, 10, np.random.default_rng(0))
    assert share.dtype == np.int64 and share.shape == (3, 500)
    assert np.any(share != 0) and np.any(share < 0) and np.any(share > 0)


@pytest.mark.parametrize(("n", "sigma"), [(10, 40.0), (50, 300.0), (1, 25.0)])
def test_the_sum_of_n_shares_has_the_target_variance(n: int, sigma: float) -> None:
    dim = 40_000
    total = _sum_of_shares(n, dim, sigma, seed=n)
    # Relative standard error of a sample variance of ~normal data is √(2/dim) ≈ 0.7%; allow 4%.
    assert total.var() == pytest.approx(sigma**2, rel=0.04)
    assert abs(total.mean()) < 5 * sigma / math.sqrt(dim)


def test_each_share_carries_one_nth_of_the_variance() -> None:
    share = device_noise_share(100_000, 60.0, 9, np.random.default_rng(1))
    assert share.var() == pytest.approx(60.0**2 / 9, rel=0.03)


def test_the_sum_is_exactly_skellam_distributed() -> None:
    """Skellam is closed under sums: 20 shares of Sk(σ²/40) add up to Sk(σ²/2). A χ² test against its pmf."""
    n, sigma, dim = 20, 3.0, 60_000
    total = _sum_of_shares(n, dim, sigma, seed=2)
    mu = sigma**2 / 2
    support = np.arange(-8, 9)
    observed = np.array([np.sum(total == k) for k in support] + [np.sum(np.abs(total) > 8)])
    pmf = stats.skellam.pmf(support, mu, mu)
    expected = np.append(pmf, 1 - pmf.sum()) * dim
    _, p_value = stats.chisquare(observed, expected)
    assert p_value > 1e-3


def test_zero_noise_and_bad_arguments() -> None:
    np.testing.assert_array_equal(device_noise_share(5, 0.0, 3, np.random.default_rng(0)), np.zeros(5))
    with pytest.raises(ValueError, match="n_expected"):
        device_noise_share(5, 1.0, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="total_sigma_grid"):
        device_noise_share(5, -1.0, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="too large"):
        device_noise_share(5, 1e12, 1, np.random.default_rng(0))


def test_modular_shares_lift_back_to_the_signed_sum() -> None:
    rng = np.random.default_rng(3)
    bits, n, k = 12, 30, 40
    quantized = [rng.integers(0, 1 << bits, 1000, dtype=np.uint64) for _ in range(n)]
    shares = [device_noise_share(1000, 5000.0, n, rng) for _ in range(n)]
    masked_total = np.zeros(1000, dtype=np.uint64)
    for q, s in zip(quantized, shares, strict=True):
        masked_total = (masked_total + add_share_mod(q, s, k)) & np.uint64((1 << k) - 1)
    true_total = np.sum([q.astype(np.int64) for q in quantized], axis=0) + np.sum(shares, axis=0)
    assert np.any(true_total < 0) or np.any(np.sum(shares, axis=0) < 0)  # the noise does go negative
    lifted = lift_noisy_sum(masked_total, k, centre=n * ((1 << bits) - 1) // 2)
    np.testing.assert_array_equal(lifted, true_total)


def test_headroom_bits_cover_the_noise_tail() -> None:
    assert noise_headroom_bits(0.0) == 0
    assert 2 ** noise_headroom_bits(1000.0) >= 2 * 12 * 1000
    assert 2 ** (noise_headroom_bits(1000.0) - 1) < 2 * 12 * 1000 + 1


def test_plan_sizes_noise_from_the_grid_sensitivity() -> None:
    plan = SkellamPlan(noise_multiplier=1.5, clip_norm=1.0, step=1e-4, dim=10_000, min_survivors=8)
    assert plan.sensitivity_grid == pytest.approx(1.0 / 1e-4 + 2 * 100)
    assert plan.total_sigma_grid == pytest.approx(1.5 * plan.sensitivity_grid)
    assert plan.total_sigma_grid * plan.step == pytest.approx(1.5 * (1.0 + 200 * 1e-4))  # σ in float units
    assert plan.accounted_noise_multiplier(8) == 1.5
    assert plan.accounted_noise_multiplier(12) == 1.5  # more survivors only add noise
    with pytest.raises(ValueError, match="must not be released"):
        plan.accounted_noise_multiplier(7)
    with pytest.raises(ValueError, match="quantization bits"):
        SkellamPlan(noise_multiplier=1.0, clip_norm=1.0, step=0.1, dim=4, min_survivors=2)
    assert grid_sensitivity(1.0, 0.5, 4) == pytest.approx(2.0 + 4.0)
    assert MIN_TOTAL_SIGMA_GRID > 0


def test_end_to_end_the_dequantized_noisy_sum_has_the_planned_float_noise() -> None:
    """Devices clip, quantize with secure aggregation's quantizer, add their share mod 2^k; the server lifts
    and dequantizes. The error against the true sum has the plan's float standard deviation."""
    rng = np.random.default_rng(4)
    n, dim, clip, z = 20, 20_000, 1.0, 1.0
    base = Quantizer(clip=clip, bits=16, modulus_bits=62, max_clients=n)
    plan = SkellamPlan(noise_multiplier=z, clip_norm=clip, step=base.step, dim=dim, min_survivors=n)
    needed = base.bits + math.ceil(math.log2(n)) + plan.headroom_bits(n) + 1
    assert needed <= 62
    quantizer = Quantizer(clip=clip, bits=16, modulus_bits=needed, max_clients=n)
    updates = [clip_to_norm(rng.standard_normal(dim).astype(np.float32), clip) for _ in range(n)]
    total = np.zeros(dim, dtype=np.uint64)

    def share(device_rng: np.random.Generator) -> np.ndarray:
        return device_noise_share(plan.dim, plan.total_sigma_grid, plan.min_survivors, device_rng)

    for update in updates:
        device_rng = np.random.default_rng(rng.integers(2**63))
        q = quantizer.quantize(update, device_rng)
        total = (total + add_share_mod(q, share(device_rng), needed)) & np.uint64((1 << needed) - 1)
    lifted = lift_noisy_sum(total, needed, centre=n * (quantizer.levels - 1) // 2)
    noisy_sum = lifted.astype(np.float64) * quantizer.step - n * clip
    error = noisy_sum - np.sum([u.astype(np.float64) for u in updates], axis=0)
    assert error.std() == pytest.approx(plan.total_sigma_grid * plan.step, rel=0.03)


def test_plan_from_spec_uses_min_reports_and_refuses_adaptive_clipping() -> None:
    spec = FederatedJobSpec.model_validate(
        {
            "rounds": 5,
            "cohort": {"clientsPerRound": 10, "minReports": 8},
            "privacy": {
                "secureAggregation": {"enabled": True},
                "differentialPrivacy": {"mode": "distributed", "clipNorm": 0.5, "noiseMultiplier": 1.0},
            },
        }
    )
    plan = skellam_plan_from_spec(spec, 1.0, step=1e-5, dim=100)
    assert plan.min_survivors == 8 and plan.clip_norm == 0.5
    adaptive = spec.model_copy(
        update={
            "privacy": spec.privacy.model_copy(
                update={
                    "differential_privacy": spec.privacy.differential_privacy.model_copy(
                        update={"adaptive_clipping": True}
                    )
                }
            )
        }
    )
    with pytest.raises(ValueError, match="adaptiveClipping"):
        skellam_plan_from_spec(adaptive, 1.0, step=1e-5, dim=100)

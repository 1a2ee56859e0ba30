"""Central DP-FedAvg: the clipping bound, the noise scale, the fixed denominator and adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedfleet.api.federatedjob import DifferentialPrivacySpec
from fedfleet.engine.round import RoundConfig, TrainingRound
from fedfleet.engine.types import ModelUpdate, Outcome
from fedfleet.privacy.dp.central import (
    AdaptiveClipping,
    CentralDP,
    central_dp_from_spec,
    clip_to_norm,
    default_count_noise_std,
    l2_norm,
    next_clip_norm,
    update_noise_multiplier,
)


def _aggregate(dp: CentralDP, updates: list[np.ndarray], seed: int = 0) -> np.ndarray:
    acc = dp.for_round(np.random.default_rng(seed)).accumulator(updates[0].shape[0])
    for u in updates:
        acc.add(u.astype(np.float32), 1)
    return acc.result()


def test_no_single_update_moves_the_sum_by_more_than_the_clip_norm() -> None:
    rng = np.random.default_rng(1)
    clip, m = 0.7, 10
    dp = CentralDP(clip, noise_multiplier=0.0, expected_clients=m)
    for scale in (1e-3, 0.5, 3.0, 1e4):
        update = (rng.standard_normal(1000) * scale).astype(np.float32)
        contribution = _aggregate(dp, [update]).astype(np.float64) * m
        assert l2_norm(contribution.astype(np.float32)) <= clip * (1 + 1e-6)
        if l2_norm(update) <= clip:  # inside the ball: passed through untouched
            np.testing.assert_allclose(contribution, update, rtol=1e-6)
        else:  # outside: scaled onto the sphere, direction kept
            np.testing.assert_allclose(contribution, update * (clip / l2_norm(update)), rtol=1e-5)


def test_sum_of_clipped_updates_divided_by_the_expected_cohort_size() -> None:
    rng = np.random.default_rng(2)
    clip, m = 1.0, 10
    updates = [(rng.standard_normal(300) * s).astype(np.float32) for s in (0.01, 0.1, 1.0)]
    dp = CentralDP(clip, noise_multiplier=0.0, expected_clients=m)
    expected = np.zeros(300)
    for u in updates:
        expected += u.astype(np.float64) * min(1.0, clip / float(np.linalg.norm(u.astype(np.float64))))
    # Fixed denominator m = 10, not the 3 updates that arrived: one device's presence moves the mean by ≤ C/m.
    np.testing.assert_allclose(_aggregate(dp, updates), expected / m, rtol=1e-6, atol=1e-9)


def test_the_number_of_examples_does_not_weight_an_update() -> None:
    dp = CentralDP(1.0, noise_multiplier=0.0, expected_clients=2)
    acc = dp.for_round(np.random.default_rng(0)).accumulator(2)
    acc.add(np.array([0.1, 0.0], dtype=np.float32), 1)
    acc.add(np.array([0.0, 0.1], dtype=np.float32), 10_000)
    np.testing.assert_allclose(acc.result(), [0.05, 0.05], rtol=1e-6)


@pytest.mark.parametrize(("z", "clip", "m"), [(1.0, 1.0, 10), (2.5, 0.3, 50)])
def test_noise_on_the_sum_has_standard_deviation_z_times_c(z: float, clip: float, m: int) -> None:
    dim = 200_000
    dp = CentralDP(clip, noise_multiplier=z, expected_clients=m)
    noise = _aggregate(dp, [np.zeros(dim, dtype=np.float32)], seed=3).astype(np.float64) * m
    # With 2·10⁵ draws the sample std has relative standard error 1/√(2n) ≈ 0.16%; 1% is > 6 standard errors.
    assert noise.std() == pytest.approx(z * clip, rel=0.01)
    assert abs(noise.mean()) < 5 * z * clip / math.sqrt(dim)
    # Gaussian, not some other shape with the right variance: excess kurtosis ≈ 0 (s.e. ≈ √(24/n) ≈ 0.011).
    kurtosis = float(np.mean((noise - noise.mean()) ** 4) / noise.var() ** 2 - 3)
    assert abs(kurtosis) < 0.06


def test_noise_is_reproducible_from_the_round_seed() -> None:
    dp = CentralDP(1.0, noise_multiplier=1.0, expected_clients=5)
    update = [np.ones(1000, dtype=np.float32) * 0.01]
    np.testing.assert_array_equal(_aggregate(dp, update, seed=7), _aggregate(dp, update, seed=7))
    assert not np.array_equal(_aggregate(dp, update, seed=7), _aggregate(dp, update, seed=8))


def test_the_aggregate_is_released_once() -> None:
    dp = CentralDP(1.0, noise_multiplier=1.0, expected_clients=5)
    acc = dp.for_round(np.random.default_rng(0)).accumulator(10)
    acc.add(np.ones(10, dtype=np.float32), 1)
    first = acc.result()
    np.testing.assert_array_equal(acc.result(), first)  # same noise, not a second independent draw
    assert dp.rounds_released == 1
    with pytest.raises(ValueError, match="released"):
        acc.add(np.ones(10, dtype=np.float32), 1)


def test_malformed_updates_are_refused_without_changing_the_sum() -> None:
    dp = CentralDP(1.0, noise_multiplier=0.0, expected_clients=1)
    acc = dp.for_round(np.random.default_rng(0)).accumulator(3)
    with pytest.raises(ValueError, match="dtype"):
        acc.add(np.ones(3, dtype=np.float64), 1)
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.ones(4, dtype=np.float32), 1)
    assert acc.count == 0
    acc.add(np.array([0.1, 0.2, 0.3], dtype=np.float32), 1)
    np.testing.assert_allclose(acc.result(), [0.1, 0.2, 0.3], rtol=1e-6)


def test_update_noise_multiplier_keeps_the_round_at_z() -> None:
    z, sigma_b = 1.2, 5.0
    z_delta = update_noise_multiplier(z, sigma_b)
    assert z_delta > z
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)
    assert update_noise_multiplier(z, None) == z
    with pytest.raises(ValueError, match="σ_b"):
        update_noise_multiplier(2.0, 1.0)
    # The default σ_b always leaves room, and costs at most ~16% extra update noise.
    for m, z in [(5, 1.0), (100, 1.0), (1000, 0.5), (10, 3.0)]:
        assert update_noise_multiplier(z, default_count_noise_std(m, z)) <= z * 1.155


def test_adaptive_clipping_noise_uses_z_delta() -> None:
    z, m, dim = 1.0, 20, 200_000
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_noise_std=default_count_noise_std(m, z))
    dp = CentralDP(0.5, noise_multiplier=z, expected_clients=m, adaptive=adaptive)
    noise = _aggregate(dp, [np.zeros(dim, dtype=np.float32)], seed=4).astype(np.float64) * m
    assert noise.std() == pytest.approx(dp.update_noise_multiplier * 0.5, rel=0.01)


def test_next_clip_norm_moves_geometrically_towards_the_quantile() -> None:
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_noise_std=0.0)
    assert next_clip_norm(1.0, 0.9, adaptive) == pytest.approx(math.exp(-0.2 * 0.4))  # too few clipped: shrink
    assert next_clip_norm(1.0, 0.1, adaptive) == pytest.approx(math.exp(0.2 * 0.4))  # too many clipped: grow
    assert next_clip_norm(1.0, 0.5, adaptive) == 1.0


@pytest.mark.parametrize(("start", "quantile"), [(0.01, 0.5), (100.0, 0.5), (1.0, 0.8)])
def test_adaptive_clipping_converges_to_the_target_quantile(start: float, quantile: float) -> None:
    """Update norms are log-normal; C should settle at their `quantile` even with a noisy count."""
    rng = np.random.default_rng(5)
    m, z = 100, 1.0
    adaptive = AdaptiveClipping(quantile, learning_rate=0.2, count_noise_std=default_count_noise_std(m, z))
    dp = CentralDP(start, noise_multiplier=z, expected_clients=m, adaptive=adaptive)
    true_quantile = math.exp(0.5 * _normal_ppf(quantile))  # norms = exp(N(0, 0.5²))
    history = []
    for round_number in range(300):
        norms = np.exp(rng.normal(0.0, 0.5, m))
        updates = [np.array([n, 0.0], dtype=np.float32) for n in norms]
        _aggregate(dp, updates, seed=round_number)
        assert dp.last_release is not None and dp.last_release.next_clip_norm == dp.clip_norm
        history.append(dp.clip_norm)
    settled = np.array(history[-100:])
    assert np.median(settled) == pytest.approx(true_quantile, rel=0.1)
    fresh = np.exp(rng.normal(0.0, 0.5, 100_000))
    assert np.mean(fresh <= np.median(settled)) == pytest.approx(quantile, abs=0.05)


def _normal_ppf(p: float) -> float:
    """Φ⁻¹(p) by bisection on erf, to keep the test free of scipy."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def test_a_failed_round_does_not_move_the_clip_norm() -> None:
    adaptive = AdaptiveClipping(0.5, 0.2, 1.0)
    dp = CentralDP(1.0, noise_multiplier=0.5, expected_clients=4, adaptive=adaptive)
    config = RoundConfig(number=1, cohort=("a", "b", "c"), target_reports=3, min_reports=3, deadline=10.0, dim=2)
    training_round = TrainingRound(config, dp.for_round(np.random.default_rng(0)))
    training_round.submit(ModelUpdate("a", 1, 5, np.array([0.1, 0.1], dtype=np.float32)), now=1.0)
    result = training_round.close()  # 1 of 3 required reports: nothing released
    assert result.aggregate is None
    assert dp.clip_norm == 1.0 and dp.rounds_released == 0


def test_central_dp_drives_a_real_training_round() -> None:
    spec = DifferentialPrivacySpec(
        mode="central", clip_norm=0.5, noise_multiplier=1.0, adaptive_clipping=True, target_quantile=0.5
    )
    dp = central_dp_from_spec(spec, noise_multiplier=1.0, expected_clients=3)
    assert dp.adaptive is not None and dp.update_noise_multiplier > 1.0
    config = RoundConfig(number=1, cohort=("a", "b", "c"), target_reports=3, min_reports=2, deadline=10.0, dim=4)
    training_round = TrainingRound(config, dp.for_round(np.random.default_rng(11)))
    for device in ("a", "b", "c"):
        delta = np.full(4, 10.0, dtype=np.float32)  # norm 20, far above C
        assert training_round.submit(ModelUpdate(device, 1, 100, delta), now=1.0) == Outcome.COMPLETED
    result = training_round.close()
    assert result.aggregate is not None and result.aggregate.dtype == np.float32
    assert dp.rounds_released == 1
    assert dp.clip_norm > 0.5  # every update was clipped, so C grows towards the median norm


def test_state_round_trip_and_validation() -> None:
    adaptive = AdaptiveClipping(0.5, 0.2, 1.0)
    dp = CentralDP(1.0, noise_multiplier=0.5, expected_clients=4, adaptive=adaptive)
    _aggregate(dp, [np.full(3, 5.0, dtype=np.float32)])
    restored = CentralDP(1.0, noise_multiplier=0.5, expected_clients=4, adaptive=adaptive)
    restored.load_state_dict(dp.state_dict())
    assert restored.clip_norm == dp.clip_norm != 1.0
    assert restored.rounds_released == 1
    with pytest.raises(ValueError, match="central DP state"):
        restored.load_state_dict({"clip_norm": "x", "rounds_released": 1})
    with pytest.raises(ValueError, match="clip_norm"):
        restored.load_state_dict({"clip_norm": -1.0, "rounds_released": 1})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0, "expected_clients": 1}, "clip_norm"),
        ({"clip_norm": 1.0, "noise_multiplier": -1.0, "expected_clients": 1}, "noise_multiplier"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "expected_clients": 0}, "expected_clients"),
    ],
)
def test_invalid_configuration_is_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CentralDP(**kwargs)  # type: ignore[arg-type]


def test_device_side_clip_to_norm() -> None:
    update = np.array([3.0, 4.0], dtype=np.float32)
    np.testing.assert_allclose(clip_to_norm(update, 1.0), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(clip_to_norm(update, 10.0), update)
    assert clip_to_norm(update, 1.0).dtype == np.float32

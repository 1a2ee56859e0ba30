"""The simulated fleet: data layout, heavy-tailed speeds, availability windows, attackers, reproducibility."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedfleet.api.federatedjob import ByzantineSpec, FederatedJobSpec, SpecError
from fedfleet.sim.attacks import attack_update
from fedfleet.sim.fleet import DeviceProfile, build_fleet, is_available, training_seconds

# The shape of mnist5k's training split: 4,000 examples, 400 per label.
LABELS = np.repeat(np.arange(10), 400)


def _spec(seed: int = 0, **simulation: Any) -> FederatedJobSpec:
    """A job spec written the way a manifest writes it (camelCase)."""
    sim = {"devices": 100, **simulation}
    return FederatedJobSpec.model_validate({"rounds": 1, "seed": seed, "simulation": sim})


def _profile(fraction: float, phase: float) -> DeviceProfile:
    return DeviceProfile(
        device_id="dev-00000",
        train_indices=np.arange(10),
        holdout_indices=np.arange(0),
        samples_per_second=100.0,
        network_seconds=1.0,
        availability_fraction=fraction,
        availability_phase_hours=phase,
        dropout_probability=0.0,
        byzantine=False,
    )


def _same_fleet(a: list[DeviceProfile], b: list[DeviceProfile]) -> bool:
    def key(p: DeviceProfile) -> tuple[Any, ...]:
        return (
            p.device_id,
            p.train_indices.tolist(),
            p.holdout_indices.tolist(),
            p.samples_per_second,
            p.network_seconds,
            p.availability_fraction,
            p.availability_phase_hours,
            p.dropout_probability,
            p.byzantine,
        )

    return [key(p) for p in a] == [key(p) for p in b]


# --- data layout -----------------------------------------------------------------------------------------


def test_iid_fleet_splits_the_training_data_evenly_with_ids() -> None:
    fleet = build_fleet(_spec(), LABELS)
    assert [p.device_id for p in fleet[:3]] == ["dev-00000", "dev-00001", "dev-00002"]
    assert len({p.device_id for p in fleet}) == 100
    assert [p.num_examples for p in fleet] == [40] * 100
    joined = np.concatenate([p.train_indices for p in fleet])
    assert sorted(joined.tolist()) == list(range(LABELS.size))


def test_holdout_is_carved_from_each_device_and_disjoint_from_its_training_data() -> None:
    fleet = build_fleet(_spec(holdoutFraction=0.2, samplesPerDevice=30), LABELS)
    for p in fleet:
        assert p.holdout_indices.size == 6
        assert p.train_indices.size == 24
        assert np.intersect1d(p.train_indices, p.holdout_indices).size == 0
    everything = np.concatenate([np.concatenate([p.train_indices, p.holdout_indices]) for p in fleet])
    assert np.unique(everything).size == everything.size == 3000


def test_shards_fleet_gives_each_device_at_most_two_labels() -> None:
    fleet = build_fleet(_spec(partition={"scheme": "shards", "shardsPerDevice": 2}), LABELS)
    assert max(np.unique(LABELS[p.train_indices]).size for p in fleet) <= 2


def test_dirichlet_fleet_with_samples_per_device_uses_a_pool_of_that_size() -> None:
    fleet = build_fleet(_spec(partition={"scheme": "dirichlet", "alpha": 0.3}, samplesPerDevice=20), LABELS)
    joined = np.concatenate([p.train_indices for p in fleet])
    assert joined.size == 2000
    assert np.unique(joined).size == 2000
    assert np.mean([np.unique(LABELS[p.train_indices]).size for p in fleet]) < 6  # skewed, not IID


def test_lognormal_sizes_vary_between_devices() -> None:
    fleet = build_fleet(_spec(sizeDistribution="lognormal", sizeSigma=1.0, samplesPerDevice=20), LABELS)
    sizes = np.array([p.num_examples for p in fleet])
    assert sizes.min() >= 1
    assert sizes.max() > 4 * np.median(sizes)
    assert sizes.sum() <= LABELS.size


def test_impossible_fleet_is_a_spec_error_naming_the_section() -> None:
    with pytest.raises(SpecError, match=r"simulation: cannot partition .* 100 devices x 50 samples = 5000"):
        build_fleet(_spec(samplesPerDevice=50), LABELS)
    with pytest.raises(SpecError, match="shards"):
        build_fleet(_spec(devices=3000, partition={"scheme": "shards", "shardsPerDevice": 2}), LABELS)


# --- compute ---------------------------------------------------------------------------------------------


def test_speeds_are_heavy_tailed_around_the_median() -> None:
    spec = _spec(devices=2000, compute={"medianSamplesPerSecond": 200, "paretoShape": 1.5})
    speeds = np.array([p.samples_per_second for p in build_fleet(spec, np.zeros(4000, dtype=np.int64))])
    assert abs(np.median(speeds) / 200 - 1) < 0.1
    seconds_per_sample = 1 / speeds
    p50, p99 = np.percentile(seconds_per_sample, [50, 99])
    # Pareto(1.5) slowness: p99/p50 = 50^(1/1.5) ≈ 13.6. Most devices are still near the median.
    assert p99 / p50 > 8
    assert np.mean((speeds > 100) & (speeds < 400)) > 0.7


def test_training_seconds_is_compute_plus_network_with_small_jitter() -> None:
    p = _profile(1.0, 0.0)  # 100 samples/s, 1 s network
    rng = np.random.default_rng(0)
    times = np.array([training_seconds(p, num_examples=50, epochs=4, rng=rng) for _ in range(500)])
    assert abs(np.median(times) - (50 * 4 / 100 + 1.0)) < 0.05
    assert 0.01 < times.std() < 0.5
    a = training_seconds(p, 50, 4, np.random.default_rng(5))
    assert a == training_seconds(p, 50, 4, np.random.default_rng(5))


# --- availability ----------------------------------------------------------------------------------------


def test_availability_window_is_a_daily_interval_shifted_by_the_phase() -> None:
    six_hours = _profile(0.25, 0.0)
    assert [is_available(six_hours, t) for t in (0.0, 5.99, 6.0, 12.0, 23.99, 24.0, 29.5)] == [
        True,
        True,
        False,
        False,
        False,
        True,
        True,
    ]
    shifted = _profile(0.25, 20.0)  # local hour = t + 20: available for t in [4, 10)
    assert [is_available(shifted, t) for t in (3.9, 4.0, 9.9, 10.0)] == [False, True, True, False]
    always = _profile(1.0, 13.0)
    assert all(is_available(always, t) for t in np.linspace(0, 100, 57))
    never = _profile(0.0, 0.0)
    assert not any(is_available(never, t) for t in np.linspace(0, 100, 57))


def test_fleet_availability_averages_to_the_spec_fraction() -> None:
    fleet = build_fleet(_spec(devices=500, availability={"fraction": 0.3}), LABELS)
    fractions = np.array([p.availability_fraction for p in fleet])
    assert abs(fractions.mean() - 0.3) < 0.03
    assert fractions.std() > 0.05  # devices differ
    hours = np.linspace(0, 48, 97)
    online = np.mean([[is_available(p, t) for p in fleet] for t in hours])
    assert abs(online - 0.3) < 0.03
    assert all(p.availability_fraction == 1.0 for p in build_fleet(_spec(), LABELS))


# --- attackers and dropout -------------------------------------------------------------------------------


def test_attackers_are_the_spec_fraction_chosen_by_the_seed() -> None:
    def attackers(seed: int) -> set[str]:
        fleet = build_fleet(_spec(seed=seed, devices=50, byzantine={"fraction": 0.2}), LABELS)
        return {p.device_id for p in fleet if p.byzantine}

    assert len(attackers(1)) == 10
    assert attackers(1) == attackers(1)
    assert attackers(1) != attackers(2)
    assert not any(p.byzantine for p in build_fleet(_spec(), LABELS))


def test_dropout_probability_comes_from_the_spec() -> None:
    fleet = build_fleet(_spec(dropoutProbability=0.15), LABELS)
    assert {p.dropout_probability for p in fleet} == {0.15}


# --- reproducibility -------------------------------------------------------------------------------------


def test_fleet_is_reproducible_from_the_seed() -> None:
    spec = dict(
        holdoutFraction=0.1,
        partition={"scheme": "dirichlet", "alpha": 0.5},
        availability={"fraction": 0.5},
        byzantine={"fraction": 0.1},
    )
    a = build_fleet(_spec(seed=11, **spec), LABELS)
    assert _same_fleet(a, build_fleet(_spec(seed=11, **spec), LABELS))
    assert not _same_fleet(a, build_fleet(_spec(seed=12, **spec), LABELS))


def test_each_aspect_draws_from_its_own_stream() -> None:
    base = build_fleet(_spec(seed=3, availability={"fraction": 0.5}), LABELS)
    other = build_fleet(_spec(seed=3, availability={"fraction": 0.8}, byzantine={"fraction": 0.3}), LABELS)
    for p, q in zip(base, other, strict=True):
        np.testing.assert_array_equal(p.train_indices, q.train_indices)
        assert p.samples_per_second == q.samples_per_second
        assert p.availability_phase_hours == q.availability_phase_hours


# --- attacks ---------------------------------------------------------------------------------------------


DELTA = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)


def test_sign_flip_sends_scale_times_the_update() -> None:
    out = attack_update(DELTA, ByzantineSpec(), np.random.default_rng(0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, -5.0 * DELTA)
    np.testing.assert_array_equal(DELTA, [0.5, -1.0, 2.0, 0.0])  # the honest update is not modified


def test_model_replacement_boosts_the_honest_direction() -> None:
    out = attack_update(DELTA, ByzantineSpec(attack="modelReplacement", scale=-10.0), np.random.default_rng(0))
    np.testing.assert_array_equal(out, 10.0 * DELTA)


def test_gaussian_noise_ignores_the_update_and_has_the_configured_spread() -> None:
    delta = np.ones(20000, dtype=np.float32)
    spec = ByzantineSpec(attack="gaussianNoise", noise_std=3.0)
    out = attack_update(delta, spec, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == delta.shape
    assert abs(float(out.mean())) < 0.1
    assert abs(float(out.std()) - 3.0) < 0.1
    np.testing.assert_array_equal(out, attack_update(delta, spec, np.random.default_rng(0)))

"""Partitions are disjoint, cover what they should, skew labels as designed, and are reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfleet.sim.partition import device_sizes, partition_dirichlet, partition_iid, partition_shards

# 4,000 labels, 400 per class: the shape of mnist5k's training split.
LABELS = np.repeat(np.arange(10), 400)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_disjoint(parts: list[np.ndarray]) -> np.ndarray:
    joined = np.concatenate(parts)
    assert np.unique(joined).size == joined.size, "a sample was given to two devices"
    return joined


def _labels_per_device(parts: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    return np.array([np.unique(labels[p]).size for p in parts])


# --- iid -------------------------------------------------------------------------------------------------


def test_iid_gives_each_device_its_size_and_covers_all_samples() -> None:
    sizes = [5, 10, 15, 20]
    parts = partition_iid(50, sizes, _rng())
    assert [p.size for p in parts] == sizes
    assert sorted(_assert_disjoint(parts).tolist()) == list(range(50))
    assert all(p.dtype == np.int64 for p in parts)


def test_iid_is_reproducible_and_random() -> None:
    a = partition_iid(1000, [100] * 10, _rng(1))
    b = partition_iid(1000, [100] * 10, _rng(1))
    c = partition_iid(1000, [100] * 10, _rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # Random, not consecutive blocks: the first device's samples are spread over the whole range.
    assert a[0].max() - a[0].min() > 500


def test_iid_rejects_more_samples_than_exist_and_empty_devices() -> None:
    with pytest.raises(ValueError, match="only 10 are available"):
        partition_iid(10, [6, 6], _rng())
    with pytest.raises(ValueError, match="at least 1 sample"):
        partition_iid(10, [5, 0], _rng())


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=20),
    spare=st.integers(0, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_iid_property_disjoint_and_sized(sizes: list[int], spare: int, seed: int) -> None:
    n = sum(sizes) + spare
    parts = partition_iid(n, sizes, _rng(seed))
    joined = _assert_disjoint(parts)
    assert [p.size for p in parts] == sizes
    assert joined.min() >= 0 and joined.max() < n


# --- shards ----------------------------------------------------------------------------------------------


def test_shards_give_each_device_at_most_shards_per_device_labels() -> None:
    parts = partition_shards(LABELS, num_devices=100, shards_per_device=2, rng=_rng())
    assert [p.size for p in parts] == [40] * 100
    assert sorted(_assert_disjoint(parts).tolist()) == list(range(LABELS.size))
    per_device = _labels_per_device(parts, LABELS)
    assert per_device.max() <= 2
    # Pathological non-IID: most devices really do see two labels, not one label duplicated.
    assert (per_device == 2).mean() > 0.7


def test_one_shard_per_device_means_one_label_per_device() -> None:
    parts = partition_shards(LABELS, num_devices=50, shards_per_device=1, rng=_rng(3))
    assert _labels_per_device(parts, LABELS).max() == 1


def test_shards_is_reproducible() -> None:
    a = partition_shards(LABELS, 20, 2, _rng(9))
    b = partition_shards(LABELS, 20, 2, _rng(9))
    c = partition_shards(LABELS, 20, 2, _rng(10))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 400),
    num_devices=st.integers(1, 20),
    shards_per_device=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_shards_property_uneven_data_is_fully_used(n: int, num_devices: int, shards_per_device: int, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 10, size=n)
    if num_devices * shards_per_device > n:
        with pytest.raises(ValueError, match="shards"):
            partition_shards(labels, num_devices, shards_per_device, _rng(seed))
        return
    parts = partition_shards(labels, num_devices, shards_per_device, _rng(seed))
    assert sorted(_assert_disjoint(parts).tolist()) == list(range(n))
    sizes = [p.size for p in parts]
    # Shards differ by at most one sample, so devices differ by at most shards_per_device samples.
    assert max(sizes) - min(sizes) <= shards_per_device


def test_shards_rejects_more_shards_than_samples() -> None:
    with pytest.raises(ValueError, match=r"200 shards, more than the 100 samples"):
        partition_shards(np.zeros(100, dtype=np.int64), num_devices=100, shards_per_device=2, rng=_rng())


# --- dirichlet -------------------------------------------------------------------------------------------


def test_dirichlet_is_disjoint_covers_all_and_respects_min_size() -> None:
    parts = partition_dirichlet(LABELS, num_devices=50, alpha=0.5, rng=_rng(), min_size=10)
    assert sorted(_assert_disjoint(parts).tolist()) == list(range(LABELS.size))
    assert min(p.size for p in parts) >= 10


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    def skew(alpha: float) -> tuple[float, float]:
        parts = partition_dirichlet(LABELS, num_devices=40, alpha=alpha, rng=_rng(4))
        dominant = np.mean([np.bincount(LABELS[p], minlength=10).max() / p.size for p in parts])
        return float(_labels_per_device(parts, LABELS).mean()), float(dominant)

    labels_small, dominant_small = skew(0.1)
    labels_large, dominant_large = skew(100.0)
    assert labels_small < 5 < labels_large
    assert dominant_small > 0.5 > 0.25 > dominant_large


def test_dirichlet_is_reproducible() -> None:
    a = partition_dirichlet(LABELS, 30, 0.3, _rng(7))
    b = partition_dirichlet(LABELS, 30, 0.3, _rng(7))
    c = partition_dirichlet(LABELS, 30, 0.3, _rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="min_size 100 needs more than the 4000 samples"):
        partition_dirichlet(LABELS, 50, 1.0, _rng(), min_size=100)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        partition_dirichlet(LABELS, 5, 0.0, _rng())
    # With α this small each class goes almost entirely to one device: 10 classes cannot feed 60 devices.
    with pytest.raises(ValueError, match="raise alpha or use fewer devices"):
        partition_dirichlet(LABELS, 60, 1e-4, _rng(), min_size=1)


# --- sizes -----------------------------------------------------------------------------------------------


def test_equal_sizes_split_the_total_evenly() -> None:
    sizes = device_sizes(1003, 10, "equal", 1.0, None, _rng())
    assert sum(sizes) == 1003
    assert max(sizes) - min(sizes) == 1
    assert device_sizes(1000, 10, "equal", 1.0, 40, _rng()) == [40] * 10


def test_lognormal_sizes_vary_around_the_mean() -> None:
    sizes = np.array(device_sizes(10**7, 2000, "lognormal", 1.0, 50, _rng(1)))
    assert sizes.min() >= 1
    assert abs(sizes.mean() / 50 - 1) < 0.1
    # σ=1 in log space: the 90th percentile is e^(2·1.28·σ) ≈ 13 times the 10th.
    p10, p90 = np.percentile(sizes, [10, 90])
    assert p90 / p10 > 6


def test_lognormal_sizes_fit_a_small_total() -> None:
    sizes = device_sizes(500, 100, "lognormal", 2.0, None, _rng(2))
    assert len(sizes) == 100
    assert min(sizes) >= 1
    assert sum(sizes) <= 500
    assert max(sizes) > 10 * np.median(sizes)  # still heavy-tailed after scaling down


def test_device_sizes_reject_impossible_requests() -> None:
    with pytest.raises(ValueError, match="20 devices need at least one sample each, but only 10"):
        device_sizes(10, 20, "equal", 1.0, None, _rng())
    with pytest.raises(ValueError, match=r"10 devices x 50 samples = 500, more than 400"):
        device_sizes(400, 10, "equal", 1.0, 50, _rng())

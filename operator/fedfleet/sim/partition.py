"""How a dataset is split across simulated devices: IID, label shards, or Dirichlet label skew.

Every function returns one sorted int64 index array per device; the arrays are disjoint and depend only on
the inputs and the state of the given ``np.random.Generator``. Pure numpy on purpose: the fleet is built
where torch may not be installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

IndexArray = NDArray[np.int64]

#: partition_dirichlet gives up after this many draws that leave some device below min_size.
MAX_DIRICHLET_ATTEMPTS = 1000


def partition_iid(n_samples: int, sizes: Sequence[int], rng: np.random.Generator) -> list[IndexArray]:
    """Deal a random permutation of ``range(n_samples)`` out in consecutive chunks of ``sizes``."""
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    if sizes_arr.ndim != 1 or sizes_arr.size == 0:
        raise ValueError("sizes must list one size per device (at least one device)")
    if sizes_arr.min() < 1:
        raise ValueError(f"every device needs at least 1 sample, got a size of {int(sizes_arr.min())}")
    total = int(sizes_arr.sum())
    if total > n_samples:
        raise ValueError(f"sizes add up to {total} samples but only {n_samples} are available")
    perm = rng.permutation(n_samples)
    bounds = np.cumsum(sizes_arr)[:-1]
    return [np.sort(part).astype(np.int64) for part in np.split(perm[:total], bounds)]


def partition_shards(
    labels: NDArray[np.integer], num_devices: int, shards_per_device: int, rng: np.random.Generator
) -> list[IndexArray]:
    """McMahan et al. 2017: sort by label, cut into equal shards, give each device ``shards_per_device``.

    Shards differ in size by at most one sample when the data does not divide evenly, so every sample is
    used. Ties within a label are broken randomly, so which examples of a label land in a shard varies with
    the generator too.
    """
    labels = np.asarray(labels)
    _check_devices(num_devices)
    if shards_per_device < 1:
        raise ValueError(f"shards_per_device must be at least 1, got {shards_per_device}")
    num_shards = num_devices * shards_per_device
    if num_shards > labels.size:
        raise ValueError(
            f"{num_devices} devices x {shards_per_device} shards = {num_shards} shards, "
            f"more than the {labels.size} samples to cut them from"
        )
    # A random permutation followed by a stable sort: sorted by label, random order within a label.
    shuffled = rng.permutation(labels.size)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_devices, shards_per_device)
    return [np.sort(np.concatenate([shards[s] for s in row])).astype(np.int64) for row in dealt]


def partition_dirichlet(
    labels: NDArray[np.integer],
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[IndexArray]:
    """Label skew from a Dirichlet prior (Hsu et al. 2019), in its widely used per-class form.

    For each class, the shares of that class's samples across devices are drawn from Dir(α·1): small α
    gives each device few labels, large α approaches IID. Like the reference implementation (Wang et al.
    2020 / Li et al. 2021 "NIID-Bench"), a device that already holds more than an equal share of the data
    gets nothing more, which keeps sizes from running away. The whole draw is repeated until every device
    has at least ``min_size`` samples.
    """
    labels = np.asarray(labels)
    _check_devices(num_devices)
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be non-negative, got {min_size}")
    n = labels.size
    if num_devices * min_size > n:
        raise ValueError(f"{num_devices} devices x min_size {min_size} needs more than the {n} samples")
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    equal_share = n / num_devices

    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        parts: list[list[IndexArray]] = [[] for _ in range(num_devices)]
        sizes = np.zeros(num_devices, dtype=np.int64)
        failed = False
        for idx in members:
            shuffled = rng.permutation(idx)
            shares = rng.dirichlet(np.full(num_devices, alpha))
            shares = np.where(sizes < equal_share, shares, 0.0)
            total = shares.sum()
            if not total > 0 or not np.isfinite(total):  # tiny α can underflow every eligible share to 0
                failed = True
                break
            cuts = (np.cumsum(shares / total) * shuffled.size).astype(np.int64)[:-1]
            for device, chunk in enumerate(np.split(shuffled, cuts)):
                parts[device].append(chunk)
                sizes[device] += chunk.size
        if not failed and sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    raise ValueError(
        f"dirichlet partition: no draw in {MAX_DIRICHLET_ATTEMPTS} gave all {num_devices} devices at least "
        f"{min_size} samples with alpha={alpha}; raise alpha or use fewer devices"
    )


def device_sizes(
    total: int,
    num_devices: int,
    distribution: Literal["equal", "lognormal"],
    sigma: float,
    mean_size: int | None,
    rng: np.random.Generator,
) -> list[int]:
    """Local dataset sizes: each at least 1, summing to at most ``total``.

    ``equal`` gives every device ``mean_size`` samples, or splits ``total`` evenly (sizes differ by at most
    one) when ``mean_size`` is None. ``lognormal`` draws sizes whose mean is ``mean_size`` (default
    ``total / num_devices``) and whose log has standard deviation ``sigma``; if the draw needs more than
    ``total`` samples, the part above the 1-sample floor is scaled down to fit.
    """
    _check_devices(num_devices)
    if num_devices > total:
        raise ValueError(f"{num_devices} devices need at least one sample each, but only {total} exist")
    if mean_size is not None and mean_size < 1:
        raise ValueError(f"mean_size must be at least 1, got {mean_size}")
    if distribution == "equal":
        if mean_size is None:
            base, extra = divmod(total, num_devices)
            return [base + (1 if i < extra else 0) for i in range(num_devices)]
        if mean_size * num_devices > total:
            raise ValueError(
                f"{num_devices} devices x {mean_size} samples = {mean_size * num_devices}, more than {total}"
            )
        return [mean_size] * num_devices
    if distribution != "lognormal":
        raise ValueError(f"unknown size distribution {distribution!r}; expected 'equal' or 'lognormal'")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    mean = float(mean_size) if mean_size is not None else total / num_devices
    # E[exp(N(mu, σ²))] = exp(mu + σ²/2), so this mu makes the mean size `mean`.
    raw = rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, size=num_devices)
    sizes = np.maximum(1, np.rint(raw)).astype(np.int64)
    if sizes.sum() > total:
        above_floor = sizes - 1
        scale = (total - num_devices) / above_floor.sum()
        sizes = 1 + np.floor(above_floor * scale).astype(np.int64)
    return [int(s) for s in sizes]


def _check_devices(num_devices: int) -> None:
    if num_devices < 1:
        raise ValueError(f"num_devices must be at least 1, got {num_devices}")

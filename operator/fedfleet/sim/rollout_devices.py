"""Who the devices of a simulated rollout fleet are: their attributes, their held-out examples, when they are
away, and which of them misbehave — all drawn from one seed.

Each aspect draws from its own stream (`sim.fleet.stream(seed, purpose)`), so changing, say, the offline windows
leaves every device's attributes and data as they were. Attribute names and values follow the Kubernetes label
syntax, so a ModelRollout's `spec.selector` can pick a segment of the simulated fleet exactly as of a real one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from fedfleet.sim.fleet import device_id, stream

#: A simulated fleet lives in one process: this bounds its memory and the tasks it starts.
MAX_DEVICES = 20_000
#: A device evaluates on a few examples of its own, never on a data set.
MAX_HOLDOUT_EXAMPLES = 256

DEVICE_CLASS = "device-class"
OS = "os"
REGION = "region"
APP_VERSION = "app-version"


@dataclass(frozen=True)
class AttributeMix:
    """For each attribute, its values and the share of the fleet that has each one."""

    shares: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: MappingProxyType(
            {
                DEVICE_CLASS: MappingProxyType({"phone-low": 0.3, "phone-high": 0.5, "tablet": 0.2}),
                OS: MappingProxyType({"android": 0.7, "ios": 0.3}),
                REGION: MappingProxyType({"eu": 0.4, "us": 0.4, "apac": 0.2}),
                APP_VERSION: MappingProxyType({"2.3.0": 0.6, "2.2.1": 0.3, "2.1.0": 0.1}),
            }
        )
    )

    def __post_init__(self) -> None:
        for name, values in self.shares.items():
            if not values:
                raise ValueError(f"attribute mix {name!r}: needs at least one value")
            for value, share in values.items():
                if not (math.isfinite(share) and share >= 0):
                    raise ValueError(f"attribute mix {name}={value}: share must be a finite number >= 0, got {share}")
            if not sum(values.values()) > 0:
                raise ValueError(f"attribute mix {name!r}: the shares must not all be 0")


@dataclass(frozen=True)
class OfflineWindows:
    """Some devices go away once for a while (switched off, out of coverage) and come back.

    A share `fraction` of the fleet has one window; it starts at a uniform time in [0, `start_within`) and lasts
    an exponential time of mean `mean_seconds` (simulated seconds), at least `min_seconds`.
    """

    fraction: float = 0.0
    start_within: float = 600.0
    mean_seconds: float = 120.0
    min_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"offline.fraction must be in [0, 1], got {self.fraction}")
        for name in ("start_within", "mean_seconds", "min_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"offline.{name} must be a finite number of seconds > 0, got {value}")


@dataclass(frozen=True)
class RolloutFleetSpec:
    devices: int
    seed: int = 0
    holdout_examples: int = 8  # per device
    attributes: AttributeMix = field(default_factory=AttributeMix)
    offline: OfflineWindows = field(default_factory=OfflineWindows)
    silent_fraction: float = 0.0  # devices that never report health (they still follow their assignment)

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= MAX_DEVICES:
            raise ValueError(f"devices must be in 1..{MAX_DEVICES}, got {self.devices}")
        if not 1 <= self.holdout_examples <= MAX_HOLDOUT_EXAMPLES:
            raise ValueError(f"holdout_examples must be in 1..{MAX_HOLDOUT_EXAMPLES}, got {self.holdout_examples}")
        if not 0.0 <= self.silent_fraction <= 1.0:
            raise ValueError(f"silent_fraction must be in [0, 1], got {self.silent_fraction}")


@dataclass(frozen=True, eq=False)
class SimulatedDevice:
    device_id: str
    ordinal: int
    attributes: Mapping[str, str]
    holdout_indices: NDArray[np.int64]  # into the fleet's pool of held-out examples
    offline: tuple[float, float] | None  # [start, end) in simulated seconds, or never away
    silent: bool  # never reports health

    def offline_at(self, t: float) -> bool:
        return self.offline is not None and self.offline[0] <= t < self.offline[1]


def build_devices(spec: RolloutFleetSpec, pool_size: int) -> list[SimulatedDevice]:
    """The fleet's devices over a pool of `pool_size` held-out examples.

    Devices get disjoint examples while the pool has enough for all of them; a fleet larger than that draws each
    device's examples independently (neighbours may share some), so 500 devices work on MNIST 5k's test split.
    """
    if pool_size < 1:
        raise ValueError("the pool of held-out examples is empty")
    n, k = spec.devices, min(spec.holdout_examples, pool_size)
    holdout = _holdout(n, k, pool_size, stream(spec.seed, "rollout.holdout"))
    attributes = _attributes(spec.attributes, n, stream(spec.seed, "rollout.attributes"))
    offline = _offline(spec.offline, n, stream(spec.seed, "rollout.offline"))
    silent = _chosen(spec.silent_fraction, n, stream(spec.seed, "rollout.silent"))
    return [
        SimulatedDevice(
            device_id=device_id(i),
            ordinal=i,
            attributes=MappingProxyType(attributes[i]),
            holdout_indices=holdout[i],
            offline=offline[i],
            silent=bool(silent[i]),
        )
        for i in range(n)
    ]


def _holdout(n: int, k: int, pool_size: int, rng: np.random.Generator) -> list[NDArray[np.int64]]:
    if n * k <= pool_size:
        order = rng.permutation(pool_size).astype(np.int64)
        return [np.sort(order[i * k : (i + 1) * k]) for i in range(n)]
    return [np.sort(rng.choice(pool_size, size=k, replace=False)).astype(np.int64) for _ in range(n)]


def _attributes(mix: AttributeMix, n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    out: list[dict[str, str]] = [{} for _ in range(n)]
    for name in sorted(mix.shares):  # a fixed order: the draws do not depend on how the mix was written
        values = sorted(mix.shares[name])
        weights = np.array([mix.shares[name][v] for v in values], dtype=np.float64)
        picks = rng.choice(len(values), size=n, p=weights / weights.sum())
        for device, pick in enumerate(picks):
            out[device][name] = values[int(pick)]
    return out


def _offline(windows: OfflineWindows, n: int, rng: np.random.Generator) -> list[tuple[float, float] | None]:
    away = _chosen(windows.fraction, n, rng)
    starts = rng.uniform(0.0, windows.start_within, size=n)
    lengths = np.maximum(windows.min_seconds, rng.exponential(windows.mean_seconds, size=n))
    return [(float(starts[i]), float(starts[i] + lengths[i])) if away[i] else None for i in range(n)]


def _chosen(fraction: float, n: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """Exactly round(fraction·n) devices, chosen at random."""
    flags = np.zeros(n, dtype=bool)
    flags[rng.choice(n, size=math.floor(fraction * n + 0.5), replace=False)] = True
    return flags

"""The simulated device fleet: who holds which data, how fast and how often each device can train.

Everything is drawn from ``spec.seed``. Each purpose (sizes, partition, hold-out, compute, availability,
attackers) draws from its own stream, ``np.random.default_rng([seed, tag])``, so changing how one aspect
is simulated (say, availability) leaves every other aspect of the fleet unchanged.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedfleet.api.federatedjob import FederatedJobSpec, SimulationSpec, SpecError
from fedfleet.engine.seeding import Purpose
from fedfleet.engine.seeding import stream as keyed_stream
from fedfleet.sim.partition import (
    IndexArray,
    device_sizes,
    partition_dirichlet,
    partition_iid,
    partition_shards,
)

HOURS_PER_DAY = 24.0
#: Concentration of the Beta distribution of per-device availability around the spec's mean fraction.
AVAILABILITY_CONCENTRATION = 8.0
#: σ of log network latency around the spec's mean.
NETWORK_SIGMA = 0.5
#: σ of the log of the per-round compute-time jitter ("a little": about ±10%).
COMPUTE_JITTER_SIGMA = 0.1


@dataclass(frozen=True, eq=False)
class DeviceProfile:
    """One simulated device. Index arrays point into the TRAIN split of the job's dataset."""

    device_id: str
    train_indices: IndexArray
    holdout_indices: IndexArray
    samples_per_second: float
    network_seconds: float
    availability_fraction: float
    availability_phase_hours: float
    dropout_probability: float
    byzantine: bool

    @property
    def num_examples(self) -> int:
        return int(self.train_indices.size)


def device_id(index: int) -> str:
    return f"dev-{index:05d}"


def stream(seed: int, purpose: str) -> np.random.Generator:
    """An independent random stream for one purpose, derived from the job seed.

    The tag is a stable hash of the purpose name, so streams do not collide with other modules' streams as
    long as the names differ.
    """
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def build_fleet(spec: FederatedJobSpec, train_labels: NDArray[np.integer]) -> list[DeviceProfile]:
    """Build ``spec.simulation.devices`` device profiles over a training split with these labels."""
    sim = spec.simulation
    labels = np.asarray(train_labels)
    parts = _partition(sim, labels, spec.seed)
    train_parts, holdout_parts = _split_holdout(parts, sim.holdout_fraction, stream(spec.seed, "fleet.holdout"))
    speeds, network = _compute(sim, stream(spec.seed, "fleet.compute"))
    fractions, phases = _availability(sim, stream(spec.seed, "fleet.availability"))
    attackers = _attackers(sim, stream(spec.seed, "fleet.byzantine"))
    return [
        DeviceProfile(
            device_id=device_id(i),
            train_indices=train_parts[i],
            holdout_indices=holdout_parts[i],
            samples_per_second=float(speeds[i]),
            network_seconds=float(network[i]),
            availability_fraction=float(fractions[i]),
            availability_phase_hours=float(phases[i]),
            dropout_probability=sim.dropout_probability,
            byzantine=bool(attackers[i]),
        )
        for i in range(sim.devices)
    ]


def is_available(profile: DeviceProfile, t_hours: float) -> bool:
    """Whether the device is inside its daily window (charging, idle, unmetered) at simulated time t."""
    if profile.availability_fraction >= 1.0:
        return True
    local_hour = (t_hours + profile.availability_phase_hours) % HOURS_PER_DAY
    return local_hour < HOURS_PER_DAY * profile.availability_fraction


def training_seconds(profile: DeviceProfile, num_examples: int, epochs: int, rng: np.random.Generator) -> float:
    """Simulated wall time of one round on this device: local compute (with jitter) plus network."""
    compute = num_examples * epochs / profile.samples_per_second
    jitter = rng.lognormal(0.0, COMPUTE_JITTER_SIGMA)
    return float(compute * jitter + profile.network_seconds)


def _partition(sim: SimulationSpec, labels: NDArray[np.integer], seed: int) -> list[IndexArray]:
    n = labels.size
    part_rng = stream(seed, "fleet.partition")
    scheme = sim.partition.scheme
    try:
        if scheme == "iid":
            sizes = device_sizes(
                n,
                sim.devices,
                sim.size_distribution,
                sim.size_sigma,
                sim.samples_per_device,
                stream(seed, "fleet.sizes"),
            )
            return partition_iid(n, sizes, part_rng)
        # Label-skewed schemes decide sizes themselves; samplesPerDevice only shrinks the pool they cut.
        pool = np.arange(n, dtype=np.int64)
        if sim.samples_per_device is not None:
            wanted = sim.devices * sim.samples_per_device
            if wanted > n:
                raise ValueError(
                    f"{sim.devices} devices x {sim.samples_per_device} samples = {wanted}, "
                    f"more than the {n} training samples"
                )
            pool = np.sort(stream(seed, "fleet.sizes").choice(n, size=wanted, replace=False))
        if scheme == "shards":
            parts = partition_shards(labels[pool], sim.devices, sim.partition.shards_per_device, part_rng)
        else:
            parts = partition_dirichlet(labels[pool], sim.devices, sim.partition.alpha, part_rng)
        return [pool[p] for p in parts]
    except ValueError as err:
        raise SpecError("simulation", f"cannot partition the training data: {err}") from err


def _split_holdout(
    parts: list[IndexArray], fraction: float, rng: np.random.Generator
) -> tuple[list[IndexArray], list[IndexArray]]:
    """Keep ``floor(fraction * size)`` of each device's samples for evaluation, but always ≥ 1 for training."""
    train, holdout = [], []
    for part in parts:
        k = min(math.floor(fraction * part.size), part.size - 1)
        shuffled = rng.permutation(part)
        holdout.append(np.sort(shuffled[:k]))
        train.append(np.sort(shuffled[k:]))
    return train, holdout


def _compute(sim: SimulationSpec, rng: np.random.Generator) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Throughput and network latency per device.

    Slowness is Pareto (x_m = 1, shape a): most devices are near the median, a few are many times slower,
    like the stragglers of real fleets. Speeds are scaled so the median device runs at the spec's median.
    """
    shape = sim.compute.pareto_shape
    slowness = 1.0 + rng.pareto(shape, size=sim.devices)  # numpy draws Lomax; +1 gives classic Pareto
    median_slowness = 2.0 ** (1.0 / shape)
    speeds = sim.compute.median_samples_per_second * median_slowness / slowness
    mean_net = sim.compute.network_seconds
    if mean_net > 0:
        network = rng.lognormal(math.log(mean_net) - NETWORK_SIGMA**2 / 2, NETWORK_SIGMA, size=sim.devices)
    else:
        network = np.zeros(sim.devices)
    return speeds, network


def _availability(sim: SimulationSpec, rng: np.random.Generator) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each device's share of the day it is available (Beta around the spec's mean) and its window's phase."""
    # Phases first: the Beta sampler consumes a varying amount of randomness, which would otherwise make
    # the phases depend on the fraction.
    phases = rng.uniform(0.0, HOURS_PER_DAY, size=sim.devices)
    mean = sim.availability.fraction
    if mean >= 1.0 or mean <= 0.0:
        fractions = np.full(sim.devices, mean)
    else:
        k = AVAILABILITY_CONCENTRATION
        fractions = rng.beta(mean * k, (1.0 - mean) * k, size=sim.devices)
    return fractions, phases


def _attackers(sim: SimulationSpec, rng: np.random.Generator) -> NDArray[np.bool_]:
    count = math.floor(sim.byzantine.fraction * sim.devices + 0.5)
    flags = np.zeros(sim.devices, dtype=bool)
    flags[rng.choice(sim.devices, size=count, replace=False)] = True
    return flags


def device_round_plan(
    spec: FederatedJobSpec, profile: DeviceProfile, round_number: int, ordinal: int, epochs: int | None = None
) -> float | None:
    """What this device does in one round it is invited to: None when it drops out, else the simulated
    seconds until its report arrives. Drawn from the device's own keyed stream, so the in-process transport
    and the device over gRPC make the same choice."""
    rng = keyed_stream(spec.seed, Purpose.SIMULATION, round_number, ordinal)
    if rng.random() < profile.dropout_probability:
        return None
    return training_seconds(profile, profile.num_examples, epochs or spec.training.local_epochs, rng)

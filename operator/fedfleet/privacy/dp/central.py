"""Central DP-FedAvg (McMahan et al. 2018) with optional adaptive clipping (Andrew et al. 2021). numpy only.

The server trusts itself to see individual updates but releases only a noised aggregate:

1. each update is clipped to L2 norm C (scaled by min(1, C/‖Δ‖)) and folded into a float64 running sum, so
   memory is O(dim) whatever the cohort size;
2. Gaussian noise N(0, (z_Δ·C)²) is added to every coordinate of the *sum*;
3. the noised sum is divided by the *expected* number of reports m, a fixed public constant — dividing by
   the actual count would let one device's presence change the result by more than C/m (McMahan et al.).

Each device counts once, whatever its number of examples: weighting by a device-reported example count
would make the sensitivity depend on an unbounded, private number.

Adaptive clipping. Each device contributes bᵢ = 1 if ‖Δᵢ‖ ≤ C. The server releases Σ(bᵢ − ½) + N(0, σ_b²)
(sensitivity ½), estimates the unclipped fraction b̄ = that/m + ½ and moves C geometrically towards the
target quantile γ: C ← C·exp(−η(b̄ − γ)). Both releases together are exactly as private as one Gaussian
mechanism with noise multiplier z when 1/z² = 1/z_Δ² + 1/(2σ_b)² (Andrew et al. 2021, Thm 1), so the
accountant is charged z and the update noise uses the slightly larger z_Δ. Without adaptive clipping z_Δ = z.

Amplification assumption (what the accountant's q means): devices are sampled uniformly at rate
q = clientsPerRound·overSelection / (eligible fleet size) per round, and the accountant treats that as
Poisson sampling. fedfleet invites a fixed-size cohort from the *available* devices, which is neither Poisson
nor independent of the device; see :mod:`fedfleet.privacy.dp.accountant` for the gap. The per-device ledger
does not rely on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedfleet.api.federatedjob import DifferentialPrivacySpec
from fedfleet.models.vector import Vector
from fedfleet.strategies.base import (
    COLUMN_BLOCK,
    Accumulator,
    AggregationRule,
    check_dim,
    check_update,
    require_updates,
)

# Adaptive clipping may shrink or grow C over thousands of rounds; keep it a usable positive number.
MIN_CLIP_NORM = 1e-12
MAX_CLIP_NORM = 1e12


def l2_norm(delta: Vector) -> float:
    """‖delta‖₂ accumulated in float64 block by block (no dim-sized float64 temporary)."""
    total = 0.0
    for start in range(0, delta.shape[0], COLUMN_BLOCK):
        block = delta[start : start + COLUMN_BLOCK].astype(np.float64)
        total += float(np.dot(block, block))
    return math.sqrt(total)


def clip_factor(norm: float, clip_norm: float) -> float:
    """min(1, C/‖Δ‖): the scale that brings an update of this norm inside the ball of radius C."""
    return 1.0 if norm <= clip_norm else clip_norm / norm


def clip_to_norm(delta: Vector, clip_norm: float) -> Vector:
    """A float32 copy of `delta` scaled into the L2 ball of radius `clip_norm` (used by devices).

    The scaling is done in float64 and rounded once; float32 rounding can leave the norm a few ulps above C,
    which the distributed mechanism's sensitivity bound absorbs (see `distributed.grid_sensitivity`).
    """
    check_clip_norm(clip_norm)
    factor = clip_factor(l2_norm(delta), clip_norm)
    out: Vector = np.multiply(delta, factor, dtype=np.float64).astype(np.float32)
    return out


def check_clip_norm(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")


def update_noise_multiplier(noise_multiplier: float, count_noise_std: float | None) -> float:
    """z_Δ for the update sum so that, together with the clipped-count release, the round costs z.

    1/z² = 1/z_Δ² + 1/(2σ_b)² (Andrew et al. 2021). Without a count release (σ_b None) z_Δ = z.
    """
    if count_noise_std is None or noise_multiplier == 0:
        return noise_multiplier
    count_multiplier = 2 * count_noise_std  # the count has sensitivity ½
    if count_multiplier <= noise_multiplier:
        raise ValueError(
            f"adaptive clipping: the clipped-count noise σ_b = {count_noise_std} must exceed z/2 = "
            f"{noise_multiplier / 2} so that some privacy is left for the update itself"
        )
    return float((noise_multiplier**-2 - count_multiplier**-2) ** -0.5)


def default_count_noise_std(expected_clients: int, noise_multiplier: float) -> float:
    """σ_b: m/20 as Andrew et al. recommend, but at least z so that z_Δ ≤ 1.16·z for small cohorts."""
    return max(expected_clients / 20, noise_multiplier)


@dataclass(frozen=True)
class AdaptiveClipping:
    target_quantile: float  # γ: the share of updates that should end up unclipped
    learning_rate: float  # η: geometric step of C per round
    count_noise_std: float  # σ_b: noise on the clipped count

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target_quantile must be in (0, 1), got {self.target_quantile!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"clip learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if not (math.isfinite(self.count_noise_std) and self.count_noise_std >= 0):
            raise ValueError(f"count_noise_std must be a finite number >= 0, got {self.count_noise_std!r}")


def next_clip_norm(clip_norm: float, unclipped_fraction: float, adaptive: AdaptiveClipping) -> float:
    """C·exp(−η(b̄ − γ)), kept within [MIN_CLIP_NORM, MAX_CLIP_NORM]."""
    step = math.exp(-adaptive.learning_rate * (unclipped_fraction - adaptive.target_quantile))
    return min(MAX_CLIP_NORM, max(MIN_CLIP_NORM, clip_norm * step))


@dataclass(frozen=True)
class Release:
    """What one round of central DP released (all of it is differentially private)."""

    clip_norm: float  # C used in the round
    unclipped_fraction: float | None  # noised b̄, when adaptive clipping is on
    next_clip_norm: float  # C for the next round


class ClippedNoisySum(Accumulator):
    """Streams clipped updates into a float64 sum; `result` adds the noise and divides by m, once."""

    def __init__(
        self,
        dim: int,
        clip_norm: float,
        sum_noise_std: float,
        expected_clients: int,
        rng: np.random.Generator,
        count_noise_std: float | None,
        on_release: Callable[[float, float | None], None],
    ) -> None:
        self._dim = check_dim(dim)
        self._clip = clip_norm
        self._sum_noise_std = sum_noise_std
        self._expected = expected_clients
        self._rng = rng
        self._count_noise_std = count_noise_std
        self._on_release = on_release
        self._sum: NDArray[np.float64] = np.zeros(self._dim, dtype=np.float64)
        self._scratch: NDArray[np.float64] = np.empty(min(self._dim, COLUMN_BLOCK), dtype=np.float64)
        self._count = 0
        self._unclipped = 0
        self._result: Vector | None = None

    def add(self, delta: Vector, num_examples: int) -> None:
        check_update(delta, num_examples, self._dim)
        if self._result is not None:
            raise ValueError("the round's aggregate was already released")
        norm = l2_norm(delta)
        factor = clip_factor(norm, self._clip)
        for start in range(0, self._dim, COLUMN_BLOCK):
            stop = min(start + COLUMN_BLOCK, self._dim)
            scratch = self._scratch[: stop - start]
            np.multiply(delta[start:stop], factor, out=scratch, dtype=np.float64)
            part = self._sum[start:stop]
            np.add(part, scratch, out=part)
        self._count += 1
        self._unclipped += int(norm <= self._clip)

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> Vector:
        """(Σ clipped + N(0, σ²)) / m as float32. Released once: later calls return the same vector."""
        if self._result is not None:
            return self._result
        require_updates(self._count)
        if self._sum_noise_std > 0:
            for start in range(0, self._dim, COLUMN_BLOCK):
                stop = min(start + COLUMN_BLOCK, self._dim)
                noise = self._scratch[: stop - start]
                self._rng.standard_normal(out=noise)
                part = self._sum[start:stop]
                part += self._sum_noise_std * noise
        out: Vector = np.empty(self._dim, dtype=np.float32)
        np.divide(self._sum, float(self._expected), out=out, casting="same_kind")
        unclipped_fraction = None
        if self._count_noise_std is not None:
            noisy = (self._unclipped - self._count / 2) + self._count_noise_std * float(self._rng.standard_normal())
            unclipped_fraction = noisy / self._expected + 0.5
        self._result = out
        self._on_release(self._clip, unclipped_fraction)
        return out


class CentralDPRule(AggregationRule):
    """The aggregation rule of one round, bound to that round's noise generator."""

    name = "dp_fedavg"
    streaming = True

    def __init__(self, owner: CentralDP, rng: np.random.Generator) -> None:
        self._owner = owner
        self._rng = rng

    def accumulator(self, dim: int) -> Accumulator:
        owner = self._owner
        return ClippedNoisySum(
            dim,
            clip_norm=owner.clip_norm,
            sum_noise_std=owner.update_noise_multiplier * owner.clip_norm,
            expected_clients=owner.expected_clients,
            rng=self._rng,
            count_noise_std=owner.adaptive.count_noise_std if owner.adaptive is not None else None,
            on_release=owner.released,
        )


class CentralDP:
    """Central DP-FedAvg over a job: the current clip norm and the per-round rules that use it.

    `noise_multiplier` is z, what the accountant is charged per round. Call :meth:`for_round` with the round's
    generator (seeded per round by the caller, so a resumed job draws the same noise) and give the returned
    rule to the round; when the round releases its aggregate, C moves (adaptive clipping) and
    :attr:`last_release` describes the round.
    """

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        expected_clients: int,
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        check_clip_norm(clip_norm)
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
        if isinstance(expected_clients, bool) or not isinstance(expected_clients, int) or expected_clients < 1:
            raise ValueError(f"expected_clients must be an integer >= 1, got {expected_clients!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.expected_clients = expected_clients
        self.adaptive = adaptive
        self.update_noise_multiplier = update_noise_multiplier(
            self.noise_multiplier, adaptive.count_noise_std if adaptive is not None else None
        )
        self._clip_norm = float(clip_norm)
        self.rounds_released = 0
        self.last_release: Release | None = None

    @property
    def clip_norm(self) -> float:
        """C for the next round."""
        return self._clip_norm

    def for_round(self, rng: np.random.Generator) -> CentralDPRule:
        return CentralDPRule(self, rng)

    def released(self, clip_norm: float, unclipped_fraction: float | None) -> None:
        """Called by a round's accumulator when it releases its aggregate."""
        new_clip = clip_norm
        if self.adaptive is not None and unclipped_fraction is not None:
            new_clip = next_clip_norm(clip_norm, unclipped_fraction, self.adaptive)
        self._clip_norm = new_clip
        self.rounds_released += 1
        self.last_release = Release(clip_norm, unclipped_fraction, new_clip)

    def state_dict(self) -> dict[str, Any]:
        return {"clip_norm": self._clip_norm, "rounds_released": self.rounds_released}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            clip = float(state["clip_norm"])
            rounds = int(state["rounds_released"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid central DP state: {exc}") from None
        check_clip_norm(clip)
        if rounds < 0:
            raise ValueError(f"invalid central DP state: rounds_released = {rounds}")
        self._clip_norm = clip
        self.rounds_released = rounds


def central_dp_from_spec(dp: DifferentialPrivacySpec, noise_multiplier: float, expected_clients: int) -> CentralDP:
    """The job's central DP from its spec; `noise_multiplier` is the resolved z (explicit or calibrated)."""
    adaptive = None
    if dp.adaptive_clipping:
        adaptive = AdaptiveClipping(
            target_quantile=dp.target_quantile,
            learning_rate=dp.clip_learning_rate,
            count_noise_std=default_count_noise_std(expected_clients, noise_multiplier),
        )
    return CentralDP(dp.clip_norm, noise_multiplier, expected_clients, adaptive)

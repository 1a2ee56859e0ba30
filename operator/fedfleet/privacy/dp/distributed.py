"""Distributed DP under secure aggregation: every device adds its share of Skellam noise (Agarwal et al. 2021).

With secure aggregation the server only ever sees the sum of the devices' integer (quantized) vectors, so
the noise has to be added by the devices themselves, on the integer grid, before masking. We use the
*Skellam* distribution, Sk(μ) = Poisson(μ) − Poisson(μ), variance 2μ, rather than the distributed discrete
Gaussian (Kairouz et al. 2021) for one reason: Skellam is closed under summation, so n independent shares
Sk(σ²/2n) add up to *exactly* Sk(σ²/2) with variance σ² — no approximation in the sum, whatever n is.
A discrete Gaussian's sum is not a discrete Gaussian.

Dropouts. Shares are sized for `min_survivors` devices (the round's minimum number of reports): if at least
that many survive, the sum's variance is σ²·survivors/min_survivors ≥ σ²; fewer survivors means the round
fails and nothing is released (secure aggregation and the round engine both refuse it).

Sensitivity on the grid. A device's update is L2-clipped to C (float), then quantized with step Δ and
stochastic rounding, which moves each coordinate by less than one grid unit. Against the server, which sees
who took part, the protected event is "this device's update was replaced by zero" (zero-out adjacency); the
integer contribution then changes by at most C/Δ + 2√d in L2 (two rounding errors of < 1 per coordinate).
:func:`grid_sensitivity` returns that bound, and the noise is σ_grid = z · sensitivity.

Accounting choice. dp-accounting has no Skellam event and its discrete Gaussian PLD is one-dimensional, so
the Skellam mechanism is accounted as the continuous Gaussian mechanism with the same variance and the same
L2 sensitivity — the accountant is charged z = σ_grid / sensitivity. This is an approximation, not a bound:
Agarwal et al. 2021 (Thm 3.5) show the Skellam's RDP exceeds the Gaussian's by a relative term of order
1/σ_grid² (plus an L1 term of order √d / (σ_grid²·sensitivity)). With secure aggregation's fine grid
(C/Δ ≳ 10⁵, so σ_grid ≳ 10⁵·z) that excess is below 10⁻⁹ of ε; :data:`MIN_TOTAL_SIGMA_GRID` refuses plans
where it would not be negligible.

Ring arithmetic. Shares are signed; a device adds its share to its quantized vector modulo 2^k
(:func:`add_share_mod`), and the server lifts the modular total back to a signed integer around the expected
centre (:func:`lift_noisy_sum`). The ring needs :func:`noise_headroom_bits` more bits than noise-free secure
aggregation so the noised sum cannot wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedfleet.api.federatedjob import FederatedJobSpec

IntVector = NDArray[np.int64]
U64Vector = NDArray[np.uint64]

# Below this total σ (in grid units) the Skellam-as-Gaussian accounting gap stops being negligible.
MIN_TOTAL_SIGMA_GRID = 100.0
# numpy's Poisson sampler refuses λ near 2^63; stay far below so int64 shares never overflow.
MAX_SHARE_LAMBDA = 1e15


def device_noise_share(
    shape: int | tuple[int, ...], total_sigma_grid: float, n_expected: int, rng: np.random.Generator
) -> IntVector:
    """One device's integer noise: Skellam with variance σ²/n, so the sum of n shares has variance σ².

    Drawn as Poisson(λ) − Poisson(λ) with λ = σ²/(2n). `rng` should be a cryptographically seeded generator
    private to the device (the server must not be able to reproduce it).
    """
    if not (math.isfinite(total_sigma_grid) and total_sigma_grid >= 0):
        raise ValueError(f"total_sigma_grid must be a finite number >= 0, got {total_sigma_grid!r}")
    if isinstance(n_expected, bool) or not isinstance(n_expected, int) or n_expected < 1:
        raise ValueError(f"n_expected must be an integer >= 1, got {n_expected!r}")
    lam = total_sigma_grid**2 / (2 * n_expected)
    if lam > MAX_SHARE_LAMBDA:
        raise ValueError(f"noise share λ = {lam:.3g} is too large for int64 shares; use a coarser grid")
    if lam == 0:
        return np.zeros(shape, dtype=np.int64)
    share: IntVector = rng.poisson(lam, shape).astype(np.int64) - rng.poisson(lam, shape).astype(np.int64)
    return share


def grid_sensitivity(clip_norm: float, step: float, dim: int) -> float:
    """L2 sensitivity of one device's quantized contribution, in grid units: C/Δ + 2√d (zero-out adjacency)."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a finite number > 0, got {step!r}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return clip_norm / step + 2 * math.sqrt(dim)


def noise_headroom_bits(total_sigma_grid: float, tail_sigmas: float = 12.0) -> int:
    """Extra ring bits so that noise within ±tail·σ cannot wrap (P(|N| > 12σ) < 10⁻³² per coordinate)."""
    if total_sigma_grid <= 0:
        return 0
    return math.ceil(math.log2(2 * tail_sigmas * total_sigma_grid + 1))


def add_share_mod(quantized: U64Vector, share: IntVector, modulus_bits: int) -> U64Vector:
    """(quantized + share) mod 2^k, with a signed share. int64 → uint64 is two's complement, i.e. mod 2^64."""
    if not 1 <= modulus_bits <= 62:
        raise ValueError(f"modulus_bits must be in 1..62, got {modulus_bits}")
    if quantized.dtype != np.uint64 or share.dtype != np.int64 or quantized.shape != share.shape:
        raise ValueError("quantized must be uint64 and share int64 of the same shape")
    out: U64Vector = quantized + share.astype(np.uint64)  # wraps modulo 2^64, which 2^k divides
    np.bitwise_and(out, np.uint64((1 << modulus_bits) - 1), out=out)
    return out


def lift_noisy_sum(total: U64Vector, modulus_bits: int, centre: int) -> IntVector:
    """The signed integer sum from its residue mod 2^k: the representative closest to `centre`.

    `centre` is the noise-free sum's midpoint (e.g. survivors·(L−1)/2 for an offset quantizer). Correct as
    long as the true noised sum lies within ±2^(k−1) of it, which `noise_headroom_bits` provides for.
    """
    if not 1 <= modulus_bits <= 62:
        raise ValueError(f"modulus_bits must be in 1..62, got {modulus_bits}")
    modulus = 1 << modulus_bits
    half = modulus >> 1
    shifted = (total.astype(np.int64) - (centre % modulus) + half) % modulus  # in [0, 2^k)
    lifted: IntVector = shifted - half + centre
    return lifted


@dataclass(frozen=True)
class SkellamPlan:
    """The distributed-noise parameters of a job: what each device adds and what the accountant is charged."""

    noise_multiplier: float  # z: σ_grid / sensitivity, what the accountant is charged per round
    clip_norm: float  # C: devices clip their update to this L2 norm before quantizing
    step: float  # Δ: float value of one grid unit of the secure-aggregation quantizer
    dim: int  # d: model parameters
    min_survivors: int  # shares are sized so that this many survivors reach the target variance

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if self.min_survivors < 1:
            raise ValueError(f"min_survivors must be >= 1, got {self.min_survivors}")
        sigma = self.total_sigma_grid
        if 0 < sigma < MIN_TOTAL_SIGMA_GRID:
            raise ValueError(
                f"distributed noise σ = {sigma:.3g} grid units is below {MIN_TOTAL_SIGMA_GRID:g}: the Skellam "
                "noise is then too coarse to be accounted as a Gaussian; use more quantization bits"
            )

    @property
    def sensitivity_grid(self) -> float:
        return grid_sensitivity(self.clip_norm, self.step, self.dim)

    @property
    def total_sigma_grid(self) -> float:
        """σ of the summed noise in grid units when exactly `min_survivors` devices report."""
        return self.noise_multiplier * self.sensitivity_grid

    def accounted_noise_multiplier(self, survivors: int) -> float:
        """z to charge for a round with `survivors` reports; refuses a round whose noise fell short of it.

        More survivors than planned only add noise, so charging z stays conservative.
        """
        if survivors < self.min_survivors:
            raise ValueError(
                f"only {survivors} devices survived but the noise shares were sized for {self.min_survivors}: "
                "the summed noise is below target and the sum must not be released"
            )
        return self.noise_multiplier

    def headroom_bits(self, max_survivors: int) -> int:
        """Ring bits the noise needs on top of the noise-free sum's, for up to `max_survivors` devices."""
        sigma = self.total_sigma_grid * math.sqrt(max(1, max_survivors) / self.min_survivors)
        return noise_headroom_bits(sigma)


def skellam_plan_from_spec(spec: FederatedJobSpec, noise_multiplier: float, step: float, dim: int) -> SkellamPlan:
    """The job's distributed-noise plan; `step` is the secure-aggregation quantizer's Δ."""
    dp = spec.privacy.differential_privacy
    # The spec refuses this combination (api/rules.py); a spec built around validation still must not run.
    if dp.adaptive_clipping:
        # Adaptive clipping would need the clipped count summed under secure aggregation too; not built yet.
        raise ValueError("privacy.differentialPrivacy.adaptiveClipping: not supported with mode distributed")
    return SkellamPlan(
        noise_multiplier=noise_multiplier,
        clip_norm=dp.clip_norm,
        step=step,
        dim=dim,
        min_survivors=spec.cohort.effective_min_reports,
    )

"""How a float model update becomes a vector over Z_2^k for secure aggregation, and how the sum comes back.

The device encodes (``UpdateEncoding.encode``); the server plans the encoding for a round (``plan_encoding``),
sends its parameters with the task, and decodes the unmasked sum (``UpdateEncoding.decode_sum``). One class
for both sides, so they cannot disagree about the arithmetic.

Device side, in this order:

1. L2 clipping (``l2_clip``): to the DP clip norm C with distributed DP, to ``normBound`` with normBounding —
   the only per-update rule secure aggregation can honour, since the server never sees an update.
2. Weighting (``weight_cap``, without DP): FedAvg weights by examples, but the server cannot divide one
   masked update by its weight. So the device multiplies its update by w = min(examples, cap)/cap ∈ (0, 1] and
   appends w·clipRange as one more coordinate; the server divides the summed vector by the summed weight.
   ``cap`` is the most examples any invitee declared at check-in (public already), so no device's weight is
   capped unless it under-declared. With DP each device counts once (the sensitivity must not depend on a
   private count), as in central DP-FedAvg.
3. Quantization onto 2^b grid points of [−c, c] with stochastic rounding (``Quantizer``).
4. Distributed DP (``noise_sigma_grid``): a Skellam share drawn from the device's own OS randomness; the
   shares of ``noise_shares`` devices sum to the target σ (see ``fedfleet.privacy.dp.distributed``).

Ring size: the n-input sum of values below 2^b needs b + ⌈log2 n⌉ bits; noise adds
``SkellamPlan.headroom_bits`` plus one sign bit, and the server lifts the noisy residue around the
noise-free sum's centre. k is capped at 62 bits (uint64 arithmetic).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedfleet.api.federatedjob import FederatedJobSpec, Strategy
from fedfleet.privacy.dp.central import clip_to_norm
from fedfleet.privacy.dp.distributed import (
    SkellamPlan,
    add_share_mod,
    device_noise_share,
    lift_noisy_sum,
    skellam_plan_from_spec,
)
from fedfleet.privacy.secagg import ring
from fedfleet.privacy.secagg.quantize import Quantizer
from fedfleet.privacy.secagg.ring import U64Vector

Float64Vector = NDArray[np.float64]


@dataclass(frozen=True)
class DecodedSum:
    total: Float64Vector  # Σ of the included devices' (weighted, clipped) updates, noise included
    weight: float  # Σ w over the included devices; their count when unweighted


@dataclass(frozen=True)
class UpdateEncoding:
    clip_range: float
    quantization_bits: int
    max_clients: int
    modulus_bits: int
    l2_clip: float = 0.0  # 0: no L2 clipping
    weight_cap: float = 0.0  # 0: unweighted
    noise_sigma_grid: float = 0.0  # 0: no distributed noise
    noise_shares: int = 1

    def __post_init__(self) -> None:
        self.quantizer  # noqa: B018 — validates clip, bits, modulus and the no-wrap bound
        for name in ("l2_clip", "weight_cap", "noise_sigma_grid"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"UpdateEncoding.{name} must be a finite number >= 0, got {value!r}")
        if self.noise_shares < 1:
            raise ValueError(f"UpdateEncoding.noise_shares must be >= 1, got {self.noise_shares}")

    @property
    def quantizer(self) -> Quantizer:
        return Quantizer(self.clip_range, self.quantization_bits, self.modulus_bits, self.max_clients)

    @property
    def weighted(self) -> bool:
        return self.weight_cap > 0

    def vector_length(self, dim: int) -> int:
        return dim + 1 if self.weighted else dim

    def weight(self, num_examples: int) -> float:
        return min(max(num_examples, 0), self.weight_cap) / self.weight_cap if self.weighted else 1.0

    def encode(
        self, delta: NDArray[np.floating], num_examples: int, rng: np.random.Generator | None = None
    ) -> U64Vector:
        """The device's input to secure aggregation. ``rng`` (rounding and noise) defaults to OS randomness:
        the server must not be able to reproduce a device's noise share."""
        rng = rng if rng is not None else np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
        x = np.asarray(delta, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot encode an update with NaN or infinite values")
        if self.l2_clip > 0:
            x = clip_to_norm(x, self.l2_clip)
        values = x.astype(np.float64)
        if self.weighted:
            w = self.weight(num_examples)
            values = np.append(values * w, w * self.clip_range)
        quantized = self.quantizer.quantize(values, rng)
        if self.noise_sigma_grid > 0:
            share = device_noise_share(values.shape[0], self.noise_sigma_grid, self.noise_shares, rng)
            quantized = add_share_mod(quantized, share, self.modulus_bits)
        return quantized

    def decode_sum(self, total: U64Vector, count: int) -> DecodedSum:
        """The float sum of ``count`` encoded updates from the unmasked modular sum of their encodings."""
        quantizer = self.quantizer
        if self.noise_sigma_grid > 0:
            centre = count * (quantizer.levels - 1) // 2
            lifted = lift_noisy_sum(total, self.modulus_bits, centre)
            values = lifted.astype(np.float64) * quantizer.step - count * self.clip_range
        else:
            values = quantizer.dequantize_sum(total, count)
        if self.weighted:
            return DecodedSum(values[:-1], float(values[-1]) / self.clip_range)
        return DecodedSum(values, float(count))


def plan_encoding(
    spec: FederatedJobSpec,
    dim: int,
    num_clients: int,
    max_examples: int,
    noise_multiplier: float | None = None,
) -> tuple[UpdateEncoding, SkellamPlan | None]:
    """The round's encoding for ``num_clients`` invitees; with distributed DP also its noise plan.

    Raises ValueError naming the spec field when the ring would need more than 62 bits.
    """
    secagg = spec.privacy.secure_aggregation
    dp = spec.privacy.differential_privacy
    bits = secagg.quantization_bits
    clip_range = secagg.clip_range
    sum_bits = bits + (num_clients - 1).bit_length()
    distributed = dp.mode == "distributed"
    plan: SkellamPlan | None = None
    headroom = 0
    weighted = not distributed
    length = dim + 1 if weighted else dim
    if distributed:
        if noise_multiplier is None:
            raise ValueError("distributed DP needs the job's noise multiplier")
        step = 2.0 * clip_range / ((1 << bits) - 1)
        plan = skellam_plan_from_spec(spec, noise_multiplier, step, length)
        headroom = plan.headroom_bits(num_clients) + 1  # + the sign bit of the lifted sum
    modulus_bits = sum_bits + headroom
    if modulus_bits > ring.MAX_MODULUS_BITS:
        raise ValueError(
            f"privacy.secureAggregation.quantizationBits: {bits} bits for {num_clients} devices"
            f"{' with distributed noise' if distributed else ''} need a {modulus_bits}-bit ring, more than "
            f"{ring.MAX_MODULUS_BITS}; use fewer bits"
        )
    if distributed:
        l2_clip = dp.clip_norm
    elif spec.aggregation.strategy == Strategy.NORM_BOUNDING:
        l2_clip = spec.aggregation.norm_bound
    else:
        l2_clip = 0.0
    encoding = UpdateEncoding(
        clip_range=clip_range,
        quantization_bits=bits,
        max_clients=num_clients,
        modulus_bits=modulus_bits,
        l2_clip=l2_clip,
        weight_cap=float(max(1, max_examples)) if weighted else 0.0,
        noise_sigma_grid=plan.total_sigma_grid if plan is not None else 0.0,
        noise_shares=plan.min_survivors if plan is not None else 1,
    )
    return encoding, plan

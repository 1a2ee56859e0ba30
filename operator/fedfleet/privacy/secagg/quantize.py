"""Fixed-point quantization of float vectors into Z_{2^k}, so that their sum can be masked and unmasked.

A value x is clipped to [−c, c] and mapped to the integer grid {0, …, L−1}, L = 2^b, by
q = (x + c)·(L−1)/(2c) with stochastic rounding (up with probability equal to the fraction), which makes
q an unbiased estimate and keeps the per-element error below one step Δ = 2c/(L−1).

No wrap-around: n quantized inputs sum to at most n·(L−1) < n·2^b, so n·2^b <= 2^k guarantees the modular
sum equals the integer sum; then Σx ≈ Σq·Δ − n·c. The constructor enforces this bound for ``max_clients``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from . import ring
from .ring import U64Vector

# Stochastic rounding and dequantization run in float64 (53-bit mantissa): with b bits of grid, float64
# rounding is about 2^(b-53) of a step. 40 bits keeps it below 2^-13 of a step, and updates are float32
# (24-bit mantissa), so a finer grid would carry no information, only rounding noise.
MAX_QUANTIZATION_BITS = 40


@dataclass(frozen=True)
class Quantizer:
    clip: float  # c: inputs are clipped to [−c, c]
    bits: int  # b: 2^b grid points per element
    modulus_bits: int  # k: the ring Z_2^k the protocol works in
    max_clients: int  # n: most inputs ever summed

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"Quantizer.clip must be a finite number > 0, got {self.clip}")
        if not 1 <= self.bits <= MAX_QUANTIZATION_BITS:
            raise ValueError(f"Quantizer.bits must be in 1..{MAX_QUANTIZATION_BITS}, got {self.bits}")
        ring.check_modulus_bits(self.modulus_bits)
        if self.max_clients < 1:
            raise ValueError(f"Quantizer.max_clients must be >= 1, got {self.max_clients}")
        if self.max_clients << self.bits > 1 << self.modulus_bits:
            raise ValueError(
                f"Quantizer: max_clients·2^bits = {self.max_clients}·2^{self.bits} exceeds 2^modulus_bits "
                f"= 2^{self.modulus_bits}; the sum could wrap"
            )

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def step(self) -> float:
        """Δ: the float distance between adjacent grid points."""
        return 2.0 * self.clip / (self.levels - 1)

    def quantize(self, vector: NDArray[np.floating], rng: np.random.Generator) -> U64Vector:
        """Clip, scale and stochastically round onto {0, …, 2^b − 1}. ``rng`` is the only randomness."""
        x = np.asarray(vector, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot quantize a vector with NaN or infinite values")
        scaled = (np.clip(x, -self.clip, self.clip) + self.clip) / self.step
        floor = np.floor(scaled)
        rounded = floor + (rng.random(x.shape) < scaled - floor)
        quantized: U64Vector = np.clip(rounded, 0, self.levels - 1).astype(np.uint64)
        return quantized

    def dequantize_sum(self, total: U64Vector, num_clients: int) -> NDArray[np.float64]:
        """The float sum of ``num_clients`` inputs from the modular sum of their quantized forms."""
        if not 1 <= num_clients <= self.max_clients:
            raise ValueError(f"num_clients must be in 1..{self.max_clients}, got {num_clients}")
        t = np.asarray(total)
        if t.dtype != np.uint64 or not ring.in_ring(t, self.modulus_bits):
            raise ValueError(f"total must be a uint64 vector of elements of Z_2^{self.modulus_bits}")
        if t.size and int(t.max()) > num_clients * (self.levels - 1):
            raise ValueError(f"total exceeds what {num_clients} quantized inputs can sum to")
        return t.astype(np.float64) * self.step - num_clients * self.clip

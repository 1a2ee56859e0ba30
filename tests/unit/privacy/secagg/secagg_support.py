"""What the secure-aggregation tests share."""

from __future__ import annotations

from fedfleet.privacy.secagg.quantize import MAX_QUANTIZATION_BITS, Quantizer


def finest_quantizer(max_clients: int, clip: float, modulus_bits: int = 32) -> Quantizer:
    """The finest grid for which the sum of ``max_clients`` inputs cannot wrap modulo 2^k.

    Production goes the other way (the job fixes the grid, the server sizes the ring for the cohort: see
    fedfleet.privacy.secure_update.plan_encoding); the tests pick the ring and want the tightest grid in it.
    """
    headroom = (max_clients - 1).bit_length()  # smallest h with max_clients <= 2^h
    bits = min(MAX_QUANTIZATION_BITS, modulus_bits - headroom)
    return Quantizer(clip=clip, bits=bits, modulus_bits=modulus_bits, max_clients=max_clients)

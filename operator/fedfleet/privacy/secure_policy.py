"""The policy of one secure-aggregation round, independent of how its messages travel: the SecAgg+
parameters for the cohort, how updates are encoded into the ring, and how the unmasked sum becomes the
aggregate the round engine applies.

The aggregator's `secure_round` runs the stages on the wall clock over gRPC; everything it decides about
privacy and correctness is here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedfleet.models.vector import Vector
from fedfleet.privacy.secagg.config import SESSION_BYTES, SecAggConfig
from fedfleet.privacy.secagg.graph import choose_parameters, default_threshold
from fedfleet.privacy.secure_update import UpdateEncoding, plan_encoding

if TYPE_CHECKING:
    from fedfleet.api.federatedjob import FederatedJobSpec
    from fedfleet.privacy.dp.distributed import SkellamPlan

#: Dropout rate the neighbour graph is sized for (SecAgg+: the graph stays connected enough w.p. 1 − 2^−40).
PLANNED_DROPOUT = 0.3


def round_config(spec: FederatedJobSpec, number: int, num_clients: int, vector_length: int, bits: int) -> SecAggConfig:
    """The SecAggConfig of a round: the spec's neighbourhood size, else SecAgg+'s O(log n) choice; a threshold
    of at least `thresholdFraction` of the neighbourhood and always a strict majority of it (with fewer, a
    server lying about who dropped could collect both secrets of one device)."""
    secagg = spec.privacy.secure_aggregation
    full = num_clients - 1
    if secagg.neighbours is None:
        degree, threshold = choose_parameters(num_clients, PLANNED_DROPOUT)
    else:
        degree = full if secagg.neighbours >= full else secagg.neighbours - secagg.neighbours % 2
        threshold = default_threshold(degree)
    threshold = min(degree, max(threshold, math.ceil(secagg.threshold_fraction * degree), degree // 2 + 1))
    return SecAggConfig(
        round_id=number,
        session=os.urandom(SESSION_BYTES),
        num_clients=num_clients,
        vector_length=vector_length,
        degree=degree,
        threshold=threshold,
        min_survivors=min(num_clients, max(threshold, spec.cohort.effective_min_reports)),
        modulus_bits=bits,
    )


@dataclass(frozen=True)
class SecureRoundPlan:
    config: SecAggConfig
    encoding: UpdateEncoding
    skellam: SkellamPlan | None  # distributed DP: the devices' noise shares
    divisor: float | None  # None: divide by the summed weights (weighted FedAvg)
    min_reports: int

    def aggregate(self, total: np.ndarray, count: int) -> Vector:
        """The aggregate of `count` devices' updates from their unmasked sum. Raises ValueError when the sum
        cannot be used (too few devices, noise that fell short, a non-finite result)."""
        if count < self.min_reports:
            raise ValueError(f"{count} devices in the sum, the round needs {self.min_reports}")
        if self.skellam is not None:
            self.skellam.accounted_noise_multiplier(count)  # refuses a sum whose noise fell short
        decoded = self.encoding.decode_sum(total, count)
        divisor = self.divisor if self.divisor is not None else decoded.weight
        if not divisor > 0:
            raise ValueError(f"the summed weight is {divisor}")
        with np.errstate(over="ignore", invalid="ignore"):
            aggregate = (decoded.total / divisor).astype(np.float32)
        if not np.isfinite(aggregate).all():
            raise ValueError("the aggregate is not finite")
        return aggregate


def plan_secure_round(
    spec: FederatedJobSpec,
    number: int,
    cohort_size: int,
    dim: int,
    declared_examples: int,
    min_reports: int,
    noise_multiplier: float | None,
) -> SecureRoundPlan:
    """The plan of a freshly started round. Raises ValueError when the spec cannot run it.

    With distributed DP the sum is divided by the expected number of reports, as central DP-FedAvg does, so
    one device changes the aggregate by at most C / clientsPerRound."""
    encoding, skellam = plan_encoding(spec, dim, cohort_size, declared_examples, noise_multiplier)
    config = round_config(spec, number, cohort_size, encoding.vector_length(dim), encoding.modulus_bits)
    divisor = float(spec.cohort.clients_per_round) if skellam is not None else None
    return SecureRoundPlan(config, encoding, skellam, divisor, min_reports)

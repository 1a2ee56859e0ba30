"""Parameters of one secure-aggregation round, shared verbatim by the server and every client."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from . import ring
from .graph import Graph, choose_parameters, neighbour_graph

SESSION_BYTES = 32


@dataclass(frozen=True)
class SecAggConfig:
    """Everything both sides must agree on before stage 0.

    ``session`` is fresh public randomness chosen by the server per round: it seeds the neighbour graph and
    salts every key derivation. ``degree`` is the number of neighbours (n−1 = complete graph);
    ``threshold`` the shares needed to rebuild a neighbour's secret, with 2·threshold > degree so that a
    server lying about dropouts cannot collect both secrets of one client; ``min_survivors`` the fewest
    inputs the server may ever learn a sum of.
    """

    round_id: int
    session: bytes
    num_clients: int
    vector_length: int
    degree: int
    threshold: int
    min_survivors: int
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        _require(0 <= self.round_id < 2**63, "round_id", "must be in 0..2^63−1")
        _require(len(self.session) == SESSION_BYTES, "session", f"must be {SESSION_BYTES} bytes")
        _require(2 <= self.num_clients < 2**31, "num_clients", "must be in 2..2^31−1")
        _require(self.vector_length >= 1, "vector_length", "must be >= 1")
        _require(1 <= self.modulus_bits <= ring.MAX_MODULUS_BITS, "modulus_bits", "must be in 1..62")
        full = self.num_clients - 1
        _require(
            self.degree == full or (self.degree % 2 == 0 and 2 <= self.degree < full),
            "degree",
            f"must be num_clients−1 ({full}, complete graph) or even in 2..{full - 1}",
        )
        _require(
            self.degree < 2 * self.threshold and self.threshold <= self.degree,
            "threshold",
            f"must satisfy degree/2 < threshold <= degree (degree={self.degree})",
        )
        _require(1 <= self.min_survivors <= self.num_clients, "min_survivors", "must be in 1..num_clients")

    @classmethod
    def create(
        cls,
        *,
        round_id: int,
        num_clients: int,
        vector_length: int,
        modulus_bits: int = 32,
        dropout_rate: float = 0.3,
        failure_log2: int = 40,
        min_survivors: int | None = None,
        session: bytes | None = None,
    ) -> SecAggConfig:
        """A config whose graph survives ``dropout_rate`` except with probability 2^−failure_log2."""
        degree, threshold = choose_parameters(num_clients, dropout_rate, failure_log2)
        return cls(
            round_id=round_id,
            session=os.urandom(SESSION_BYTES) if session is None else session,
            num_clients=num_clients,
            vector_length=vector_length,
            degree=degree,
            threshold=threshold,
            min_survivors=threshold if min_survivors is None else min_survivors,
            modulus_bits=modulus_bits,
        )

    @cached_property
    def graph(self) -> Graph:
        return neighbour_graph(self.num_clients, self.degree, self.session)

    def neighbours(self, client_id: int) -> frozenset[int]:
        return self.graph[client_id]


def _require(ok: bool, field: str, rule: str) -> None:
    if not ok:
        raise ValueError(f"SecAggConfig.{field} {rule}")

"""Krum and Multi-Krum (Blanchard et al. 2017).

Each update is scored by the sum of squared distances to its n−f−2 nearest other updates; Krum returns the
best-scored update, Multi-Krum the example-weighted mean of the m best. Robustness: tolerates f arbitrary
updates among n provided n ≥ 2f+3, assuming honest updates cluster more tightly than attackers can mimic.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedfleet.models.vector import Vector
from fedfleet.strategies.base import Accumulator, AggregationRule, StoredUpdates, require_updates
from fedfleet.strategies.fedavg import WeightedSum


def min_updates(f: int) -> int:
    """Fewest updates Krum can score with f tolerated attackers: n − f − 2 ≥ 1 neighbours and n > 2f + 2."""
    return 2 * f + 3


def squared_distances(gram: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pairwise squared distances from the Gram matrix G = X Xᵀ: ‖xᵢ−xⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ.

    Clamped at 0 because cancellation can leave tiny negatives for near-identical updates.
    """
    sq = np.diag(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def krum_scores(dist: NDArray[np.float64], f: int) -> NDArray[np.float64]:
    """Score of each update: the sum of its n−f−2 smallest squared distances to the other updates."""
    n = dist.shape[0]
    if n < min_updates(f):
        raise ValueError(
            f"krum needs at least 2f+3 = {min_updates(f)} updates to tolerate f={f} byzantine ones, got {n}"
        )
    others = dist.copy()
    np.fill_diagonal(others, np.inf)  # an update is not its own neighbour; inf sorts last
    neighbours = n - f - 2
    scores: NDArray[np.float64] = np.sort(others, axis=1)[:, :neighbours].sum(axis=1)
    return scores


def krum_select(scores: NDArray[np.float64], m: int) -> NDArray[np.intp]:
    """Indices of the m best (lowest) scores, best first; ties go to the earlier update."""
    return np.argsort(scores, kind="stable")[:m]


class KrumAccumulator(StoredUpdates):
    def __init__(self, dim: int, byzantine_count: int, select: int | None) -> None:
        super().__init__(dim)
        self._f = byzantine_count
        self._select = select  # None: n − f, the usual Multi-Krum choice
        self.selected: tuple[int, ...] = ()  # indices (in add order) the last result() averaged

    def _gram(self) -> NDArray[np.float64]:
        n = self.count
        gram = np.zeros((n, n), dtype=np.float64)
        for _, block in self.blocks():
            b64 = block.astype(np.float64)
            gram += b64 @ b64.T
        return gram

    def result(self) -> Vector:
        require_updates(self.count)
        n = self.count
        scores = krum_scores(squared_distances(self._gram()), self._f)
        m = self._select if self._select is not None else n - self._f
        if m > n:
            raise ValueError(f"multiKrum selects m={m} updates but the round has only {n}")
        chosen = krum_select(scores, m)
        self.selected = tuple(int(i) for i in chosen)
        if m == 1:
            return self._rows[self.selected[0]].copy()
        total = WeightedSum(self._dim)
        for i in self.selected:
            total.add_scaled(self._rows[i], float(self._weights[i]), self._weights[i])
        return total.mean()


class Krum(AggregationRule):
    """Krum: the single best-scored update."""

    name = "krum"
    streaming = False

    def __init__(self, byzantine_count: int) -> None:
        if byzantine_count < 0:
            raise ValueError(f"byzantine_count must be >= 0, got {byzantine_count}")
        self.byzantine_count = byzantine_count

    def accumulator(self, dim: int) -> Accumulator:
        return KrumAccumulator(dim, self.byzantine_count, select=1)


class MultiKrum(Krum):
    """Multi-Krum: the example-weighted mean of the m best-scored updates (m = n − f when not given)."""

    name = "multiKrum"

    def __init__(self, byzantine_count: int, select: int | None = None) -> None:
        super().__init__(byzantine_count)
        if select is not None and select < 1:
            raise ValueError(f"multiKrum select must be >= 1, got {select}")
        self.select = select

    def accumulator(self, dim: int) -> Accumulator:
        return KrumAccumulator(dim, self.byzantine_count, self.select)

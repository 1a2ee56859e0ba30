"""What the tests of the aggregation rules share: random updates and a whole round through one rule."""

from __future__ import annotations

import numpy as np

from fedfleet.strategies.base import COLUMN_BLOCK, AggregationRule

# Crosses a column-block boundary, so block-wise code paths are exercised.
DIM = COLUMN_BLOCK + 37


def updates(n: int, dim: int = DIM, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(dim)).astype(np.float32) for _ in range(n)]


def aggregate(rule: AggregationRule, deltas: list[np.ndarray], weights: list[int] | None = None) -> np.ndarray:
    acc = rule.accumulator(deltas[0].shape[0])
    for i, d in enumerate(deltas):
        acc.add(d, weights[i] if weights else 1)
    assert acc.count == len(deltas)
    out = acc.result()
    assert out.dtype == np.float32 and out.shape == deltas[0].shape
    return out

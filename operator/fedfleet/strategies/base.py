"""The aggregation-rule interface.

A rule turns the round's accepted updates into one aggregate delta. Rules that can (weighted mean, norm
bounding) fold each update in as it arrives, so memory does not grow with the cohort; rules that need every
update at once (median, trimmed mean, Krum) keep them — that is inherent to those rules.

Accumulators assume finite values: the round engine rejects non-finite updates before they get here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from fedfleet.models.vector import Vector

# Coordinates processed per step by the column-wise rules and the streaming sums: big enough that numpy's
# per-call overhead vanishes, small enough that the float64 scratch (512 KiB) stays in cache.
COLUMN_BLOCK = 1 << 16


class Accumulator(ABC):
    """Collects one round's updates. `add` is called once per accepted update, `result` once at the end."""

    @abstractmethod
    def add(self, delta: Vector, num_examples: int) -> None: ...

    @property
    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def result(self) -> Vector:
        """The aggregate delta (float32, same length as the updates). Needs count >= 1."""


class AggregationRule(ABC):
    name: str
    streaming: bool

    @abstractmethod
    def accumulator(self, dim: int) -> Accumulator: ...


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return int(dim)


def check_update(delta: Vector, num_examples: int, dim: int) -> None:
    """Raise ValueError unless `delta` is a float32 vector of length `dim` and `num_examples` >= 1.

    Called before an accumulator changes anything, so a refused update leaves it as it was.
    """
    if not isinstance(delta, np.ndarray) or delta.shape != (dim,):
        shape = getattr(delta, "shape", type(delta).__name__)
        raise ValueError(f"update has shape {shape}, expected ({dim},)")
    if delta.dtype != np.float32:
        raise ValueError(f"update has dtype {delta.dtype}, expected float32")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")


def require_updates(count: int) -> None:
    if count < 1:
        raise ValueError("cannot aggregate a round with no updates")


class StoredUpdates(Accumulator):
    """Base of the rules that need every update at once: keeps a private copy of each one.

    Copies, because callers may reuse their buffers between `add` calls. The rules work on column blocks
    (`blocks()`), so their scratch memory is n × COLUMN_BLOCK rather than a second n × dim matrix.
    """

    def __init__(self, dim: int) -> None:
        self._dim = check_dim(dim)
        self._rows: list[Vector] = []
        self._weights: list[int] = []

    def add(self, delta: Vector, num_examples: int) -> None:
        check_update(delta, num_examples, self._dim)
        self._rows.append(np.array(delta, dtype=np.float32, copy=True))
        self._weights.append(int(num_examples))

    @property
    def count(self) -> int:
        return len(self._rows)

    def blocks(self) -> Iterator[tuple[slice, NDArray[np.float32]]]:
        """(columns, n × len(columns) matrix of those columns of every update), covering all columns."""
        for start in range(0, self._dim, COLUMN_BLOCK):
            cols = slice(start, min(start + COLUMN_BLOCK, self._dim))
            yield cols, np.stack([row[cols] for row in self._rows])

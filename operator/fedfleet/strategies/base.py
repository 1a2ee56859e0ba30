"""The two halves of a strategy: the aggregation rule and the server optimizer.

A rule turns the round's accepted updates into one aggregate delta. Rules that can (weighted mean, norm
bounding) fold each update in as it arrives, so memory does not grow with the cohort; rules that need every
update at once (median, trimmed mean, Krum) keep them — that is inherent to those rules.

Accumulators assume finite values: the round engine rejects non-finite updates before they get here.

A server optimizer (Reddi et al. 2021, "Adaptive Federated Optimization") treats the aggregate delta Δ as a
pseudo-gradient step and turns it into the change of the global weights; FedAvg's is the plain step
x ← x + ηΔ. Its state (moments, step count) is kept in float64 and `state_dict()` returns exact copies, so
an optimizer restored from a checkpoint continues bit-for-bit as if it had never stopped.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping

import numpy as np
from numpy.typing import NDArray

from fedfleet.models.vector import Vector

# Coordinates processed per step by the column-wise rules and the streaming sums: big enough that numpy's
# per-call overhead vanishes, small enough that the float64 scratch (512 KiB) stays in cache.
COLUMN_BLOCK = 1 << 16

Float64 = NDArray[np.float64]


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


# ---- server optimizers ----------------------------------------------------------------------------


def check_rate(name: str, value: float, *, upper: float = math.inf) -> float:
    if not (math.isfinite(value) and 0 < value <= upper):
        raise ValueError(f"{name} must be in (0, {upper}], got {value!r}")
    return float(value)


def check_decay(name: str, value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class ServerOptimizer(ABC):
    """Applies the round's aggregate delta to the global weights, keeping whatever state the rule needs.

    State is allocated on the first `apply`, or restored by `load_state_dict`: the optimizer learns the model
    size from the first weights it sees.
    """

    name: str
    state_keys: tuple[str, ...] = ()  # the float64 vectors of state, besides "step"

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = check_rate("server learning rate", learning_rate)
        self._dim: int | None = None
        self._state: dict[str, Float64] = {}
        self._steps = 0

    def _reset(self, dim: int) -> None:
        self._dim = dim
        self._state = self._initial_state(dim)

    def _initial_state(self, dim: int) -> dict[str, Float64]:
        return {}

    @abstractmethod
    def _step(self, delta: Float64) -> Float64:
        """Update the state with Δ (in place) and return the change to add to the weights."""

    def apply(self, weights: Vector, delta: Vector) -> Vector:
        """The new global weights (float32) after one step with Δ; `weights` and `delta` are not modified."""
        for label, vec in (("weights", weights), ("delta", delta)):
            if not isinstance(vec, np.ndarray) or vec.ndim != 1:
                raise ValueError(f"{label} must be a 1-D array, got shape {getattr(vec, 'shape', None)}")
        if weights.shape != delta.shape:
            raise ValueError(f"delta has shape {delta.shape}, but weights have shape {weights.shape}")
        if self._dim is not None and weights.shape[0] != self._dim:
            raise ValueError(f"weights have {weights.shape[0]} parameters, the optimizer state has {self._dim}")
        # A non-finite pseudo-gradient would poison the moments for every later round: refuse it up front.
        if not np.isfinite(delta).all():
            raise ValueError("delta contains non-finite values")
        if self._dim is None:
            self._reset(weights.shape[0])
        x = weights.astype(np.float64)
        x += self._step(delta.astype(np.float64))
        self._steps += 1
        return x.astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state: "step" (0-d int64) and, once allocated, the state vectors (float64)."""
        out: dict[str, np.ndarray] = {"step": np.array(self._steps, dtype=np.int64)}
        out.update({key: value.copy() for key, value in self._state.items()})
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what `state_dict` returned. Validates everything before changing anything.

        A dict holding only "step" (state never allocated) is accepted and leaves allocation to `apply`.
        """
        keys, full = set(state), {"step", *self.state_keys}
        if keys != full and keys != {"step"}:
            missing, unexpected = sorted(full - keys), sorted(keys - full)
            raise ValueError(f"{self.name} state: missing keys {missing}, unexpected keys {unexpected}")
        step = np.asarray(state["step"])
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise ValueError(f"{self.name} state: 'step' must be a non-negative integer scalar, got {step!r}")
        vectors: dict[str, Float64] = {}
        for key in self.state_keys if keys == full else ():
            arr = np.asarray(state[key])
            if arr.ndim != 1 or arr.dtype.kind != "f":
                raise ValueError(f"{self.name} state: {key!r} must be a 1-D float array, got {arr.dtype} {arr.shape}")
            vectors[key] = np.array(arr, dtype=np.float64, copy=True)
        lengths = {v.shape[0] for v in vectors.values()}
        if len(lengths) > 1:
            raise ValueError(f"{self.name} state: vectors have different lengths {sorted(lengths)}")
        if lengths and self._dim is not None and lengths != {self._dim}:
            raise ValueError(f"{self.name} state has {lengths.pop()} parameters, the optimizer expects {self._dim}")
        self._steps = int(step)
        if vectors:
            self._dim = next(iter(lengths))
            self._state = vectors
        elif self._dim is not None and self.state_keys:
            self._reset(self._dim)
        # A stateless optimizer, or one whose state was never allocated, has nothing more to restore.

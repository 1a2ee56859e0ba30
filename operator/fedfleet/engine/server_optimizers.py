"""Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

The aggregate delta Δ is treated as a pseudo-gradient step; each optimizer turns it into the change of the
global weights. FedAvg is the plain step x ← x + ηΔ.

State (moments, step count) is kept in float64 and `state_dict()` returns exact copies, so an optimizer
restored from a checkpoint continues bit-for-bit as if it had never stopped. The paper's adaptive rules
have no bias correction; neither do these.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from fedfleet.models.vector import Vector

Float64 = NDArray[np.float64]


def _check_rate(name: str, value: float, *, upper: float = math.inf) -> float:
    if not (math.isfinite(value) and 0 < value <= upper):
        raise ValueError(f"{name} must be in (0, {upper}], got {value!r}")
    return float(value)


def _check_decay(name: str, value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class ServerOptimizer(ABC):
    """Applies the round's aggregate delta to the global weights, keeping whatever state the rule needs.

    State is allocated on the first `apply` (or at construction when `dim` is known).
    """

    name: str
    state_keys: tuple[str, ...] = ()  # the float64 vectors of state, besides "step"

    def __init__(self, learning_rate: float, dim: int | None = None) -> None:
        self.learning_rate = _check_rate("server learning rate", learning_rate)
        self._dim: int | None = None
        self._state: dict[str, Float64] = {}
        self._steps = 0
        if dim is not None:
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"dim must be a positive integer, got {dim!r}")
            self._reset(dim)

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def steps(self) -> int:
        """How many deltas have been applied."""
        return self._steps

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


class FedAvgServer(ServerOptimizer):
    """x ← x + ηΔ."""

    name = "fedavg"

    def _step(self, delta: Float64) -> Float64:
        delta *= self.learning_rate
        return delta


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019): v ← βv + Δ; x ← x + ηv."""

    name = "fedavgm"
    state_keys = ("momentum",)

    def __init__(self, learning_rate: float, momentum: float, dim: int | None = None) -> None:
        self.momentum = _check_decay("server momentum", momentum)
        super().__init__(learning_rate, dim)

    def _initial_state(self, dim: int) -> dict[str, Float64]:
        return {"momentum": np.zeros(dim, dtype=np.float64)}

    def _step(self, delta: Float64) -> Float64:
        v = self._state["momentum"]
        v *= self.momentum
        v += delta
        return self.learning_rate * v


class _Adaptive(ServerOptimizer):
    """The shared shape of FedAdam, FedYogi and FedAdagrad (Reddi et al. 2021, Algorithm 2):

    m ← β1·m + (1−β1)·Δ;  v ← second_moment(v, Δ²);  x ← x + η·m / (√v + τ),  with v initialised to τ².
    """

    state_keys = ("m", "v")

    def __init__(self, learning_rate: float, beta1: float, beta2: float, tau: float, dim: int | None = None) -> None:
        self.beta1 = _check_decay("beta1", beta1)
        self.beta2 = _check_decay("beta2", beta2)
        self.tau = _check_rate("tau", tau)
        super().__init__(learning_rate, dim)

    def _initial_state(self, dim: int) -> dict[str, Float64]:
        return {"m": np.zeros(dim, dtype=np.float64), "v": np.full(dim, self.tau**2, dtype=np.float64)}

    @abstractmethod
    def _second_moment(self, v: Float64, delta_sq: Float64) -> None:
        """Update v in place from Δ²."""

    def _step(self, delta: Float64) -> Float64:
        m, v = self._state["m"], self._state["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * delta
        self._second_moment(v, np.square(delta))
        return self.learning_rate * m / (np.sqrt(v) + self.tau)


class FedAdam(_Adaptive):
    """v ← β2·v + (1−β2)·Δ²."""

    name = "fedadam"

    def _second_moment(self, v: Float64, delta_sq: Float64) -> None:
        v *= self.beta2
        v += (1.0 - self.beta2) * delta_sq


class FedYogi(_Adaptive):
    """v ← v − (1−β2)·Δ²·sign(v − Δ²): v moves towards Δ² by an additive step, so it reacts more slowly
    than Adam's multiplicative decay when gradients shrink."""

    name = "fedyogi"

    def _second_moment(self, v: Float64, delta_sq: Float64) -> None:
        v -= (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)


class FedAdagrad(_Adaptive):
    """v ← v + Δ² (no second-moment decay, so no β2)."""

    name = "fedadagrad"

    def __init__(self, learning_rate: float, beta1: float, tau: float, dim: int | None = None) -> None:
        super().__init__(learning_rate, beta1, 0.0, tau, dim)

    def _second_moment(self, v: Float64, delta_sq: Float64) -> None:
        v += delta_sq

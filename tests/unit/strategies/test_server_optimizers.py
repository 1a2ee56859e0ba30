"""What every server optimizer promises: steps equal to a hand computation (Reddi et al. 2021), exact state
round-trips through a checkpoint, and refused input or state that changes nothing."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from fedfleet.strategies.base import ServerOptimizer
from fedfleet.strategies.fedadagrad import FedAdagrad
from fedfleet.strategies.fedadam import FedAdam
from fedfleet.strategies.fedavg import FedAvgServer
from fedfleet.strategies.fedavgm import FedAvgM
from fedfleet.strategies.fedyogi import FedYogi

LR, B1, B2, TAU, MOMENTUM = 0.1, 0.9, 0.99, 1e-3, 0.8

FACTORIES: dict[str, Callable[[], ServerOptimizer]] = {
    "fedavg": lambda: FedAvgServer(LR),
    "fedavgm": lambda: FedAvgM(LR, MOMENTUM),
    "fedadam": lambda: FedAdam(LR, B1, B2, TAU),
    "fedyogi": lambda: FedYogi(LR, B1, B2, TAU),
    "fedadagrad": lambda: FedAdagrad(LR, B1, TAU),
}

X0 = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
DELTAS = [
    np.array([0.1, -0.2, 0.0, 3.0], np.float32),
    np.array([-0.05, -0.2, 1e-4, -1.0], np.float32),
    np.array([0.3, 0.0, -2.0, 0.5], np.float32),
]


def sign(x: float) -> float:
    return (x > 0) - (x < 0)


def reference(name: str) -> list[list[float]]:
    """Weights after each step, one coordinate at a time in plain Python floats."""
    out: list[list[float]] = []
    xs = [float(v) for v in X0]
    m = [0.0] * len(xs)
    v = [TAU**2 if name in ("fedadam", "fedyogi", "fedadagrad") else 0.0] * len(xs)
    for delta in DELTAS:
        for i, d in enumerate(float(t) for t in delta):
            if name == "fedavg":
                xs[i] += LR * d
            elif name == "fedavgm":
                v[i] = MOMENTUM * v[i] + d
                xs[i] += LR * v[i]
            else:
                m[i] = B1 * m[i] + (1 - B1) * d
                if name == "fedadam":
                    v[i] = B2 * v[i] + (1 - B2) * d * d
                elif name == "fedyogi":
                    v[i] = v[i] - (1 - B2) * d * d * sign(v[i] - d * d)
                else:
                    v[i] = v[i] + d * d
                xs[i] += LR * m[i] / (math.sqrt(v[i]) + TAU)
        # The optimizer rounds the weights to float32 after every step, and so must the reference.
        xs = [float(np.float32(x)) for x in xs]
        out.append(list(xs))
    return out


@pytest.mark.parametrize("name", FACTORIES)
def test_steps_match_hand_computation(name: str) -> None:
    opt = FACTORIES[name]()
    x = X0
    for step, (delta, expected) in enumerate(zip(DELTAS, reference(name), strict=True), start=1):
        x = opt.apply(x, delta)
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)
        assert opt.state_dict()["step"] == step


@pytest.mark.parametrize("name", FACTORIES)
def test_inputs_are_not_modified(name: str) -> None:
    x, d = X0.copy(), DELTAS[0].copy()
    FACTORIES[name]().apply(x, d)
    np.testing.assert_array_equal(x, X0)
    np.testing.assert_array_equal(d, DELTAS[0])


@pytest.mark.parametrize("name", FACTORIES)
def test_resume_from_state_dict_is_bit_identical(name: str) -> None:
    rng = np.random.default_rng(7)
    deltas = [rng.standard_normal(1000).astype(np.float32) for _ in range(6)]
    x = rng.standard_normal(1000).astype(np.float32)
    original = FACTORIES[name]()
    for d in deltas[:3]:
        x = original.apply(x, d)
    saved = original.state_dict()
    # What a checkpoint would do: the arrays go through an .npz file and come back.
    restored = FACTORIES[name]()
    restored.load_state_dict({k: np.array(v) for k, v in saved.items()})
    x_a, x_b = x, x.copy()
    for d in deltas[3:]:
        x_a, x_b = original.apply(x_a, d), restored.apply(x_b, d)
        np.testing.assert_array_equal(x_a, x_b)
    a, b = original.state_dict(), restored.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("name", ["fedavgm", "fedadam"])
def test_state_dict_is_a_copy(name: str) -> None:
    opt = FACTORIES[name]()
    opt.apply(X0, DELTAS[0])
    before = opt.state_dict()
    for value in opt.state_dict().values():
        value[...] = 123
    for key, value in opt.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_state_of_a_never_used_optimizer_loads_lazily() -> None:
    fresh = FedAdam(LR, B1, B2, TAU).state_dict()
    assert set(fresh) == {"step"}
    opt = FedAdam(LR, B1, B2, TAU)
    opt.load_state_dict(fresh)
    np.testing.assert_allclose(opt.apply(X0, DELTAS[0]), reference("fedadam")[0], rtol=1e-6)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"step": np.array(1, np.int64), "m": np.zeros(4)}, r"missing keys \['v'\], unexpected keys \[\]"),
        (
            {"step": np.array(1), "m": np.zeros(4), "v": np.zeros(4), "extra": np.zeros(4)},
            r"unexpected keys \['extra'\]",
        ),
        ({"step": np.array(-1), "m": np.zeros(4), "v": np.zeros(4)}, "'step' must be a non-negative integer"),
        ({"step": np.array(1.5), "m": np.zeros(4), "v": np.zeros(4)}, "'step' must be a non-negative integer"),
        ({"step": np.array([1]), "m": np.zeros(4), "v": np.zeros(4)}, "'step' must be a non-negative integer"),
        ({"step": np.array(1), "m": np.zeros(4), "v": np.zeros(5)}, r"different lengths \[4, 5\]"),
        ({"step": np.array(1), "m": np.zeros((4, 1)), "v": np.zeros(4)}, "'m' must be a 1-D float array"),
        ({"step": np.array(1), "m": np.zeros(4, np.int64), "v": np.zeros(4)}, "'m' must be a 1-D float array"),
        ({"step": np.array(1), "m": np.zeros(3), "v": np.zeros(3)}, "has 3 parameters, the optimizer expects 4"),
    ],
)
def test_bad_state_is_refused_and_changes_nothing(state: dict[str, np.ndarray], message: str) -> None:
    opt = FedAdam(LR, B1, B2, TAU)
    opt.apply(X0, DELTAS[0])  # allocates state for X0's 4 parameters
    before = opt.state_dict()
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    after = opt.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.parametrize("name", FACTORIES)
def test_bad_apply_is_refused_and_changes_nothing(name: str) -> None:
    opt = FACTORIES[name]()
    opt.apply(X0, DELTAS[0])
    before = opt.state_dict()
    bad_delta = DELTAS[1].copy()
    bad_delta[2] = np.nan
    with pytest.raises(ValueError, match="delta contains non-finite values"):
        opt.apply(X0, bad_delta)
    with pytest.raises(ValueError, match=r"delta has shape \(3,\), but weights have shape \(4,\)"):
        opt.apply(X0, DELTAS[1][:3])
    with pytest.raises(ValueError, match="weights have 3 parameters, the optimizer state has 4"):
        opt.apply(X0[:3], DELTAS[1][:3])
    with pytest.raises(ValueError, match="weights must be a 1-D array"):
        opt.apply(X0.reshape(2, 2), DELTAS[1])
    after = opt.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FedAvgServer(0.0), r"server learning rate must be in \(0, inf\]"),
        (lambda: FedAvgServer(math.nan), "server learning rate must be in"),
        (lambda: FedAvgM(1.0, 1.0), r"server momentum must be in \[0, 1\)"),
        (lambda: FedAdam(1.0, -0.1, 0.9, 1e-3), r"beta1 must be in \[0, 1\)"),
        (lambda: FedYogi(1.0, 0.9, 1.0, 1e-3), r"beta2 must be in \[0, 1\)"),
        (lambda: FedAdagrad(1.0, 0.9, 0.0), r"tau must be in \(0, inf\]"),
    ],
)
def test_bad_hyperparameters_are_refused(make: Callable[[], ServerOptimizer], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()

"""The adaptive server optimizers (FedOpt): single steps by hand, and how each one updates the second moment."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from fedfleet.strategies.fedadagrad import FedAdagrad
from fedfleet.strategies.fedadam import FedAdam
from fedfleet.strategies.fedopt import FedOpt
from fedfleet.strategies.fedyogi import FedYogi

LR, B1, B2, TAU = 0.1, 0.9, 0.99, 1e-3

ADAPTIVE: dict[str, Callable[[], FedOpt]] = {
    "fedadam": lambda: FedAdam(LR, B1, B2, TAU),
    "fedyogi": lambda: FedYogi(LR, B1, B2, TAU),
    "fedadagrad": lambda: FedAdagrad(LR, B1, TAU),
}


def test_first_adam_step_by_hand() -> None:
    # One coordinate, Δ = 1: m = 0.1, v = 0.99·1e-6 + 0.01, x = 0 + 0.1 · 0.1 / (√v + 1e-3).
    opt = FedAdam(LR, B1, B2, TAU)
    out = opt.apply(np.zeros(1, np.float32), np.ones(1, np.float32))
    expected = 0.1 * 0.1 / (math.sqrt(0.99e-6 + 0.01) + 1e-3)
    assert math.isclose(float(out[0]), expected, rel_tol=1e-6)
    # Yogi's v grows additively from τ² instead: v = 1e-6 + 0.01.
    yogi = FedYogi(LR, B1, B2, TAU)
    state = (yogi.apply(np.zeros(1, np.float32), np.ones(1, np.float32)), yogi.state_dict())[1]
    assert state["v"][0] == pytest.approx(1e-6 + 0.01, rel=1e-12)


def test_yogi_shrinks_v_additively_while_adam_decays_it() -> None:
    yogi, adam = FedYogi(1.0, 0.0, 0.5, 1e-3), FedAdam(1.0, 0.0, 0.5, 1e-3)
    big, small = np.array([2.0], np.float32), np.array([0.1], np.float32)
    for opt in (yogi, adam):
        opt.apply(np.zeros(1, np.float32), big)
        opt.apply(np.zeros(1, np.float32), small)
    v_yogi_1 = 1e-6 + 0.5 * 4
    assert yogi.state_dict()["v"][0] == pytest.approx(v_yogi_1 - 0.5 * 0.01)
    v_adam_1 = 0.5 * 1e-6 + 0.5 * 4
    assert adam.state_dict()["v"][0] == pytest.approx(0.5 * v_adam_1 + 0.5 * 0.01)


@pytest.mark.parametrize(("name", "v_after"), [("fedadam", B2 * TAU**2), ("fedyogi", TAU**2), ("fedadagrad", TAU**2)])
def test_second_moment_starts_at_tau_squared(name: str, v_after: float) -> None:
    # A zero Δ leaves m at 0 and the weights unchanged, and shows where v started: Adam decays τ² once,
    # Yogi and Adagrad add nothing to it.
    opt = ADAPTIVE[name]()
    x = np.array([0.5, -1.0, 2.0], np.float32)
    np.testing.assert_array_equal(opt.apply(x, np.zeros(3, np.float32)), x)
    state = opt.state_dict()
    np.testing.assert_allclose(state["v"], np.full(3, v_after), rtol=1e-15)
    np.testing.assert_array_equal(state["m"], np.zeros(3))
    assert state["step"] == 1 and state["step"].dtype == np.int64

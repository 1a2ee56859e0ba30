"""ε of DP-FedAvg rounds: agreement with independent accountants, calibration, and the budget stop.

Independent computations used as references (different code, different authors, same mathematics):
- Opacus' RDP accountant (`opacus.accountants.analysis.rdp`, Meta; Yousefpour et al. 2021, "Opacus:
  User-Friendly Differential Privacy Library in PyTorch"), a separate implementation of the RDP of the
  Poisson-sampled Gaussian (Mironov, Talwar & Zhang 2019) — compared with our ``method="rdp"``;
- Opacus' PRV accountant (Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy"),
  a numerical near-exact accountant built on privacy random variables — compared with our ``method="pld"``
  (dp-accounting's privacy-loss-distribution accountant), which approximates the same exact curve.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator

import pytest
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from fedfleet.api.federatedjob import DifferentialPrivacySpec
from fedfleet.privacy.dp.accountant import (
    PrivacyAccountant,
    PrivacyBudgetExceeded,
    RoundRun,
    calibrate_noise_multiplier,
    epsilon_of_runs,
    epsilon_spent,
    per_participation_epsilon,
    resolve_noise_multiplier,
    sampling_rate,
)

# (noise multiplier σ, sampling rate q, rounds, δ)
SETTINGS = [
    (1.1, 256 / 60000, 14063, 1e-5),  # TF Privacy's MNIST DP-SGD tutorial: batch 256 of 60k, 60 epochs
    (1.0, 0.01, 1000, 1e-5),  # a cross-device job: 100 of 10k devices per round
    (0.8, 0.1, 100, 1e-6),  # little noise, heavy sampling: large ε
    (2.0, 0.05, 500, 1e-5),
    (1.3, 0.02, 300, 1e-7),
    (1.0, 1.0, 1, 1e-5),  # no sampling at all: the plain Gaussian mechanism
]


@pytest.fixture(autouse=True)
def _quiet_accountants() -> Iterator[None]:
    # Both libraries log or warn about RDP orders they skip; the numbers are what the tests check.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="opacus")
        yield
    absl.setLevel(level)


@pytest.mark.parametrize(("sigma", "q", "rounds", "delta"), SETTINGS)
def test_rdp_epsilon_agrees_with_opacus_rdp_within_one_percent(
    sigma: float, q: float, rounds: int, delta: float
) -> None:
    orders = [float(a) for a in DEFAULT_RDP_ORDERS]  # the same grid of orders, so only the implementations differ
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=rounds, orders=orders)
    reference, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    ours = epsilon_spent(sigma, q, rounds, delta, method="rdp")
    assert ours == pytest.approx(reference, rel=0.01)


@pytest.mark.parametrize(("sigma", "q", "rounds", "delta"), SETTINGS[1:])
def test_pld_epsilon_agrees_with_opacus_prv_within_one_percent(
    sigma: float, q: float, rounds: int, delta: float
) -> None:
    prv = PRVAccountant()
    prv.history = [(sigma, q, rounds)]
    reference = prv.get_epsilon(delta=delta, eps_error=1e-3)
    ours = epsilon_spent(sigma, q, rounds, delta, method="pld")
    assert ours == pytest.approx(reference, rel=0.01)


@pytest.mark.parametrize(("sigma", "q", "rounds", "delta"), SETTINGS[1:4])
def test_pld_is_tighter_than_rdp_but_both_are_close(sigma: float, q: float, rounds: int, delta: float) -> None:
    rdp = epsilon_spent(sigma, q, rounds, delta, method="rdp")
    pld = epsilon_spent(sigma, q, rounds, delta, method="pld")
    assert 0.75 * rdp < pld < rdp


def test_epsilon_grows_with_rounds_and_sampling_and_shrinks_with_noise() -> None:
    base = epsilon_spent(1.0, 0.01, 100, 1e-5)
    assert epsilon_spent(1.0, 0.01, 200, 1e-5) > base
    assert epsilon_spent(1.0, 0.02, 100, 1e-5) > base
    assert epsilon_spent(2.0, 0.01, 100, 1e-5) < base
    assert epsilon_spent(1.0, 0.01, 100, 1e-6) > base


def test_degenerate_rounds() -> None:
    assert epsilon_spent(1.0, 0.01, 0, 1e-5) == 0.0
    assert epsilon_spent(1.0, 0.0, 100, 1e-5) == 0.0
    assert epsilon_spent(0.0, 0.01, 1, 1e-5) == math.inf


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1.0, 0.1, 10, 1e-5), "noise_multiplier"),
        ((1.0, 1.5, 10, 1e-5), "sampling_rate"),
        ((1.0, 0.1, -1, 1e-5), "rounds"),
        ((1.0, 0.1, 10, 0.0), "delta"),
        ((1.0, 0.1, 10, 1.0), "delta"),
        ((math.nan, 0.1, 10, 1e-5), "noise_multiplier"),
    ],
)
def test_invalid_parameters_are_named(args: tuple[float, float, int, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        epsilon_spent(*args)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="rdp, pld"):
        epsilon_spent(1.0, 0.1, 10, 1e-5, method="moments")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "q", "rounds", "delta"),
    [(1.0, 0.01, 1000, 1e-5), (4.0, 0.05, 200, 1e-5), (8.0, 0.1, 50, 1e-6), (0.5, 1.0, 1, 1e-5)],
)
def test_calibration_finds_the_smallest_noise_meeting_the_target(
    target: float, q: float, rounds: int, delta: float
) -> None:
    tolerance = 1e-3
    z = calibrate_noise_multiplier(target, q, rounds, delta, tolerance=tolerance)
    assert epsilon_spent(z, q, rounds, delta) <= target  # never overspends
    assert epsilon_spent(z * (1 - 2 * tolerance), q, rounds, delta) > target  # and is not needlessly noisy
    assert epsilon_spent(z, q, rounds, delta) == pytest.approx(target, rel=0.01)


def test_calibration_rejects_bad_targets() -> None:
    with pytest.raises(ValueError, match="target_epsilon"):
        calibrate_noise_multiplier(0.0, 0.1, 10, 1e-5)
    with pytest.raises(ValueError, match="tolerance"):
        calibrate_noise_multiplier(1.0, 0.1, 10, 1e-5, tolerance=0.0)


def test_resolve_noise_multiplier_uses_the_explicit_value_or_calibrates() -> None:
    explicit = DifferentialPrivacySpec(mode="central", noise_multiplier=1.7, target_epsilon=3.0)
    assert resolve_noise_multiplier(explicit, 0.05, 100) == 1.7
    target = DifferentialPrivacySpec(mode="central", target_epsilon=3.0, delta=1e-6)
    z = resolve_noise_multiplier(target, 0.05, 100)
    assert epsilon_spent(z, 0.05, 100, 1e-6) <= 3.0
    assert epsilon_spent(z, 0.05, 100, 1e-6) == pytest.approx(3.0, rel=0.01)


def test_an_unreachable_target_epsilon_is_named() -> None:
    # The aggregator finds this only when it plans the job's noise; its message is what the operator shows.
    tiny = DifferentialPrivacySpec(mode="central", target_epsilon=1e-4)
    with pytest.raises(ValueError) as caught:
        resolve_noise_multiplier(tiny, 4 / 6, 3)
    message = str(caught.value)
    assert message.startswith("privacy.differentialPrivacy.targetEpsilon: cannot be reached: no noise multiplier")
    assert "ε = 0.0001 over 3 rounds" in message


def test_sampling_rate_is_invited_over_fleet_capped_at_one() -> None:
    assert sampling_rate(30, 1000) == pytest.approx(0.03)
    assert sampling_rate(30, 20) == 1.0
    with pytest.raises(ValueError):
        sampling_rate(0, 10)


def test_per_participation_epsilon_is_the_unsampled_single_round() -> None:
    assert per_participation_epsilon(1.0, 1e-5) == epsilon_spent(1.0, 1.0, 1, 1e-5)
    # Amplification: the same round costs a sampled device far less.
    assert epsilon_spent(1.0, 0.01, 1, 1e-5) < per_participation_epsilon(1.0, 1e-5) / 4


def test_accountant_refuses_the_round_that_would_exceed_the_budget() -> None:
    z, q, delta = 1.0, 0.05, 1e-5
    # A budget that fits exactly 7 rounds (ε after 7 rounds, plus a hair).
    budget = epsilon_spent(z, q, 7, delta) * (1 + 1e-9)
    accountant = PrivacyAccountant(delta, z, q)
    ran = 0
    while accountant.epsilon_after_next() <= budget:
        accountant.record_round()
        ran += 1
        assert accountant.epsilon <= budget  # reported after every round, never above the budget
    assert ran == 7
    assert accountant.epsilon == pytest.approx(epsilon_spent(z, q, 7, delta))
    with pytest.raises(PrivacyBudgetExceeded, match="round 8") as caught:
        accountant.check_next_round(budget)
    assert caught.value.epsilon_after > budget
    assert accountant.rounds == 7  # refusing a round records nothing


def test_accountant_composes_rounds_with_different_parameters() -> None:
    accountant = PrivacyAccountant(1e-5, 1.0, 0.02)
    for _ in range(3):
        accountant.record_round()
    accountant.record_round(noise_multiplier=1.5, sampling_rate=0.04)
    accountant.record_round(noise_multiplier=1.5, sampling_rate=0.04)
    assert accountant.runs == (RoundRun(1.0, 0.02, 3), RoundRun(1.5, 0.04, 2))
    expected = epsilon_of_runs([RoundRun(1.0, 0.02, 3), RoundRun(1.5, 0.04, 2)], 1e-5)
    assert accountant.epsilon == pytest.approx(expected)
    # Composition costs more than either part alone.
    assert accountant.epsilon > epsilon_spent(1.0, 0.02, 3, 1e-5)
    assert accountant.epsilon > epsilon_spent(1.5, 0.04, 2, 1e-5)


def test_accountant_state_round_trips_through_json() -> None:
    accountant = PrivacyAccountant(1e-6, 1.2, 0.03, method="rdp")
    for _ in range(4):
        accountant.record_round()
    accountant.record_round(noise_multiplier=0.9)
    state = json.loads(json.dumps(accountant.state_dict()))
    restored = PrivacyAccountant.from_state(state)
    assert restored.epsilon == accountant.epsilon
    assert restored.runs == accountant.runs
    assert restored.epsilon_after_next() == accountant.epsilon_after_next()
    # ε is recomputed from the runs, not trusted from the file.
    state["epsilon"] = 0.0
    assert PrivacyAccountant.from_state(state).epsilon == accountant.epsilon


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"delta": 1e-5, "noise_multiplier": 1.0, "sampling_rate": 0.1, "runs": [[1.0, 2.0, 3]]},
        {"delta": 1e-5, "noise_multiplier": 1.0, "sampling_rate": 0.1, "runs": [[1.0, 0.1, 0]]},
        {"delta": 1e-5, "noise_multiplier": 1.0, "sampling_rate": 0.1, "runs": "nope"},
        {"delta": 2.0, "noise_multiplier": 1.0, "sampling_rate": 0.1, "runs": []},
    ],
)
def test_corrupt_accountant_state_is_refused(state: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PrivacyAccountant.from_state(state)

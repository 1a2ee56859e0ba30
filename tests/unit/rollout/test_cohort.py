"""Cohort buckets: keyed, uniform, monotonic in the weight, canary and control apart."""

from __future__ import annotations

import hashlib
import hmac
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from fedfleet.rollout.cohort import BUCKETS, CONTROL_START, bucket, has_control, in_canary, in_control, width
from fedfleet.rollout.errors import InvalidField

IDS = [f"device-{i:05d}" for i in range(10_000)]
weights = st.floats(min_value=0, max_value=100, allow_nan=False)
buckets = st.integers(min_value=0, max_value=BUCKETS - 1)


def test_bucket_is_the_keyed_hash_that_other_implementations_must_reproduce() -> None:
    # The device SDK and any other gateway must compute the same bucket; this is the contract, spelled out.
    for device in ("phone-1", "é-unicode", "x" * 500):
        mac = hmac.new(b"salt-a", device.encode(), hashlib.sha256).digest()
        assert bucket("salt-a", device) == int.from_bytes(mac[:8], "big") % BUCKETS
    assert all(0 <= bucket("s", d) < BUCKETS for d in IDS[:1000])


def test_bucket_depends_on_the_salt_and_is_stable() -> None:
    first = [bucket("rollout-a", d) for d in IDS[:1000]]
    assert first == [bucket("rollout-a", d) for d in IDS[:1000]]
    other = [bucket("rollout-b", d) for d in IDS[:1000]]
    assert sum(a == b for a, b in zip(first, other, strict=True)) < 10  # ~0.1 expected by chance


def test_raising_the_weight_never_removes_a_device_from_the_canary() -> None:
    slots = {d: bucket("monotonic", d) for d in IDS}
    steps = sorted([*np.random.default_rng(7).uniform(0, 100, 40).tolist(), 0, 0.5, 1, 5, 25, 50, 99.99, 100])
    previous: set[str] = set()
    for weight in steps:
        canary = {d for d, b in slots.items() if in_canary(b, weight)}
        assert previous <= canary, f"weight {weight} dropped {sorted(previous - canary)[:3]}"
        previous = canary
    assert len(previous) == len(IDS)  # weight 100 is everybody


@settings(max_examples=300, deadline=None)
@given(buckets, weights, weights)
def test_canary_membership_is_monotonic_in_the_weight(slot: int, a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert not in_canary(slot, low) or in_canary(slot, high)
    assert not in_control(slot, low) or in_control(slot, high) or not has_control(high)


def test_buckets_are_uniform_by_chi_square() -> None:
    n, bins = 100_000, 100
    counts = np.bincount([bucket("uniformity", f"id-{i}") // (BUCKETS // bins) for i in range(n)], minlength=bins)
    expected = n / bins
    statistic = float(((counts - expected) ** 2 / expected).sum())
    # A uniform hash exceeds the 0.999 quantile once in a thousand salts; this salt is fixed, so no flakiness.
    assert statistic < chi2.ppf(0.999, bins - 1), statistic


def test_different_salts_give_independent_cohorts() -> None:
    a = np.array([in_canary(bucket("salt-one", d), 30) for d in IDS])
    b = np.array([in_canary(bucket("salt-two", d), 30) for d in IDS])
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]], dtype=float)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(0.999, 1), table  # 2x2 independence test
    assert abs(a.mean() - 0.30) < 0.02 and abs(b.mean() - 0.30) < 0.02


@pytest.mark.parametrize("weight", [0, 0.01, 0.5, 1, 5, 25, 33.33, 50])
def test_control_cohort_has_the_canary_width_and_never_meets_it(weight: float) -> None:
    canary = [b for b in range(BUCKETS) if in_canary(b, weight)]
    control = [b for b in range(BUCKETS) if in_control(b, weight)]
    assert len(canary) == len(control) == width(weight)
    assert not set(canary) & set(control)
    assert has_control(weight)


@pytest.mark.parametrize("weight", [50.01, 60, 99.5, 100])
def test_above_weight_50_there_is_no_control_cohort(weight: float) -> None:
    assert not has_control(weight)
    assert not any(in_control(b, weight) for b in range(BUCKETS))


@settings(max_examples=300, deadline=None)
@given(buckets, weights)
def test_no_bucket_is_both_canary_and_control(slot: int, weight: float) -> None:
    assert not (in_canary(slot, weight) and in_control(slot, weight))


def test_a_weight_is_a_percentage_with_a_resolution_of_one_bucket() -> None:
    assert width(0.5) == 50  # half a percent
    assert width(0.29) == 29  # 0.29 * 100 is 28.999999999999996 in floating point
    assert width(100) == BUCKETS
    assert width(0) == 0 and not in_canary(0, 0)  # weight 0 (an aborted rollout): nobody
    assert in_canary(49, 0.5) and not in_canary(50, 0.5)
    assert in_control(CONTROL_START, 0.01) and not in_control(CONTROL_START + 1, 0.01)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: bucket("", "d"), "salt"),
        (lambda: bucket("s" * 257, "d"), "salt"),
        (lambda: bucket("s", ""), "deviceId"),
        (lambda: width(-0.01), "weight"),
        (lambda: width(100.01), "weight"),
        (lambda: width(math.nan), "weight"),
        (lambda: width(math.inf), "weight"),
        (lambda: width(True), "weight"),
        (lambda: in_canary(BUCKETS, 10), "bucket"),
        (lambda: in_control(-1, 10), "bucket"),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_field(call: object, field: str) -> None:
    with pytest.raises(InvalidField) as error:
        call()  # type: ignore[operator]
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")


def test_a_huge_weight_is_refused_without_echoing_it_in_full() -> None:
    for huge in (10**400, 10**5000):  # the second is beyond Python's digit limit for str()
        with pytest.raises(InvalidField) as error:
            width(huge)
        assert error.value.field == "weight" and len(str(error.value)) < 100

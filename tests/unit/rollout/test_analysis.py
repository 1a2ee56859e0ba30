"""Analysis: judging samples (no data never passes), each limit of a run, and combining metrics."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedfleet.rollout.analysis import (
    MAX_MESSAGE_CHARS,
    Measurement,
    MeasurementPhase,
    MetricRule,
    RunPhase,
    Sample,
    combine,
    judge,
    run_phase,
)
from fedfleet.rollout.conditions import compile_condition
from fedfleet.rollout.errors import InvalidField

S, F, INC, E = (
    MeasurementPhase.SUCCESSFUL,
    MeasurementPhase.FAILED,
    MeasurementPhase.INCONCLUSIVE,
    MeasurementPhase.ERROR,
)
ACCURACY_OK = compile_condition("result >= 0.9", "successCondition")
ACCURACY_BAD = compile_condition("result < 0.8", "failureCondition")
NEAR_BASELINE = compile_condition("result >= baseline - 0.02", "successCondition")


def rule(success: Any = ACCURACY_OK, failure: Any = None, **limits: int) -> MetricRule:
    return MetricRule("accuracy", success, failure, **limits)


def sample(value: float | None = 0.95, baseline: float | None = None, devices: int = 50, **kw: Any) -> Sample:
    return Sample(value, baseline, devices, **kw)


def phases(*seq: MeasurementPhase) -> list[Measurement]:
    return [Measurement(p, None, None, 10, "", float(t)) for t, p in enumerate(seq)]


# ---- judging one sample ------------------------------------------------------------------------------


def test_no_data_never_passes() -> None:
    lenient = rule(compile_condition("true", "successCondition"))  # a condition that passes anything
    assert judge(lenient, sample(value=None), 1.0).phase is INC
    assert judge(lenient, sample(value=math.nan), 1.0).phase is INC
    assert judge(lenient, sample(devices=0), 1.0).phase is INC
    too_few = rule(lenient.success, min_reporting_devices=20)
    measured = judge(too_few, sample(devices=19), 1.0)
    assert measured.phase is INC and "19 devices reported, fewer than the 20 required" in measured.message
    assert judge(too_few, sample(devices=20), 1.0).phase is S


def test_a_failed_query_is_an_error_whatever_the_value() -> None:
    measured = judge(rule(), sample(value=0.99, error="prometheus: connection refused"), 5.0)
    assert measured.phase is E and "connection refused" in measured.message and measured.at == 5.0


@pytest.mark.parametrize(
    ("success", "failure", "value", "expected"),
    [
        (ACCURACY_OK, None, 0.95, S),
        (ACCURACY_OK, None, 0.85, F),  # only a success condition: not met is a failure
        (None, ACCURACY_BAD, 0.85, S),  # only a failure condition: not met is a success
        (None, ACCURACY_BAD, 0.75, F),
        (ACCURACY_OK, ACCURACY_BAD, 0.95, S),
        (ACCURACY_OK, ACCURACY_BAD, 0.75, F),
        (ACCURACY_OK, ACCURACY_BAD, 0.85, INC),  # both, neither met: the grey zone is inconclusive (Argo)
        (compile_condition("result > 0.0", "s"), compile_condition("result > 0.5", "f"), 0.7, F),  # failure wins
    ],
)
def test_conditions_decide_as_in_argo_rollouts(success: Any, failure: Any, value: float, expected: Any) -> None:
    measured = judge(rule(success, failure), sample(value=value), 1.0)
    assert measured.phase is expected, measured.message
    assert measured.value == value and measured.devices == 50


def test_the_baseline_reaches_the_condition_and_a_missing_one_is_an_error_when_used() -> None:
    assert judge(rule(NEAR_BASELINE), sample(0.90, baseline=0.91), 1.0).phase is S
    assert judge(rule(NEAR_BASELINE), sample(0.85, baseline=0.91), 1.0).phase is F
    for missing in (None, math.nan):  # a NaN baseline is no baseline
        measured = judge(rule(NEAR_BASELINE), sample(0.90, baseline=missing), 1.0)
        assert measured.phase is E and "baseline is null" in measured.message
        assert measured.baseline is None


def test_a_huge_error_message_is_cut_to_size() -> None:
    measured = judge(rule(), sample(error="x" * 100_000), 1.0)
    assert measured.phase is E and len(measured.message) == MAX_MESSAGE_CHARS


def test_an_infinite_value_is_judged_but_kept_json_safe() -> None:
    latency = rule(compile_condition("result < 200.0", "successCondition"))
    measured = judge(latency, sample(value=math.inf), 1.0)
    assert measured.phase is F and "inf" in measured.message
    assert measured.value is None
    json.dumps(measured.to_dict(), allow_nan=False)


# ---- a run of measurements -------------------------------------------------------------------------


def test_failures_up_to_the_limit_are_tolerated() -> None:
    metric = rule(count=5, failure_limit=1)
    assert run_phase(metric, phases(S, F, S)) is RunPhase.RUNNING
    assert run_phase(metric, phases(S, F, S, F)) is RunPhase.FAILED
    assert run_phase(metric, phases(S, F, S, S, S)) is RunPhase.SUCCESSFUL  # one failure ≤ limit, count reached


def test_the_default_failure_limit_is_zero() -> None:
    assert run_phase(rule(count=3), phases(F)) is RunPhase.FAILED


def test_inconclusive_measurements_beyond_the_limit_make_the_run_inconclusive() -> None:
    metric = rule(count=4, inconclusive_limit=2)
    assert run_phase(metric, phases(INC, S, INC)) is RunPhase.RUNNING
    assert run_phase(metric, phases(INC, S, INC, INC)) is RunPhase.INCONCLUSIVE
    assert run_phase(rule(count=4), phases(S, INC)) is RunPhase.INCONCLUSIVE  # default limit 0


def test_only_consecutive_errors_count_against_their_limit() -> None:
    metric = rule(count=3, consecutive_error_limit=2)
    assert run_phase(metric, phases(E, E, S, E, E, S)) is RunPhase.RUNNING  # streaks of 2 never exceed 2
    assert run_phase(metric, phases(S, E, E, E)) is RunPhase.ERROR
    assert run_phase(rule(count=9), phases(E, E, E, E)) is RunPhase.RUNNING  # default limit 4
    assert run_phase(rule(count=9), phases(E, E, E, E, E)) is RunPhase.ERROR


def test_errors_and_no_data_are_retried_so_they_do_not_count_towards_count() -> None:
    metric = rule(count=2, inconclusive_limit=2)
    assert run_phase(metric, phases(S, E)) is RunPhase.RUNNING
    assert run_phase(metric, phases(S, E, S)) is RunPhase.SUCCESSFUL
    assert run_phase(metric, phases(S, INC, INC)) is RunPhase.RUNNING
    assert run_phase(metric, phases(S, INC, INC, S)) is RunPhase.SUCCESSFUL
    assert run_phase(metric, phases(S, INC, INC, INC)) is RunPhase.INCONCLUSIVE
    # One tolerated no-data measurement never completes a metric (Argo would call this one Successful).
    assert run_phase(rule(count=1, inconclusive_limit=1), phases(INC)) is RunPhase.RUNNING


def test_a_failure_limit_that_would_let_only_failures_pass_is_refused() -> None:
    with pytest.raises(InvalidField, match="below count"):
        rule(count=2, failure_limit=2)
    assert run_phase(rule(count=0, failure_limit=5), phases(F, F, F)) is RunPhase.RUNNING  # background: no count


def test_count_zero_runs_until_a_limit_trips() -> None:
    background = rule(count=0, failure_limit=2)
    assert run_phase(background, phases(*[S] * 100)) is RunPhase.RUNNING
    assert run_phase(background, phases(*[S] * 50, F, F, F)) is RunPhase.FAILED


def test_a_run_without_measurements_is_running() -> None:
    assert run_phase(rule(), []) is RunPhase.RUNNING


def test_a_finished_run_keeps_its_phase_whatever_comes_after() -> None:
    metric = rule(count=2)
    assert run_phase(metric, phases(F, S, S, S)) is RunPhase.FAILED
    assert run_phase(metric, phases(S, S, F, F)) is RunPhase.SUCCESSFUL
    assert run_phase(metric, phases(INC, S, S)) is RunPhase.INCONCLUSIVE


measurement_phases = st.sampled_from(list(MeasurementPhase))
limits = st.integers(min_value=0, max_value=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(measurement_phases, max_size=12), st.integers(min_value=0, max_value=6), limits, limits, limits)
def test_a_run_ends_at_the_first_measurement_that_trips_a_rule_and_stays_ended(
    seq: list[MeasurementPhase], count: int, failures: int, inconclusive: int, errors: int
) -> None:
    assume(count == 0 or failures < count)
    metric = rule(count=count, failure_limit=failures, inconclusive_limit=inconclusive, consecutive_error_limit=errors)
    after = [run_phase(metric, phases(*seq[:n])) for n in range(len(seq) + 1)]
    end = next((n for n, phase in enumerate(after) if phase is not RunPhase.RUNNING), None)
    if all(p is INC for p in seq):  # no data never passes, whatever the limits
        assert RunPhase.SUCCESSFUL not in after
    if end is None:
        return
    phase, seen = after[end], seq[:end]
    assert all(later is phase for later in after[end:])  # nothing appended changes a finished run
    if phase is RunPhase.SUCCESSFUL:
        assert count > 0 and seen.count(S) + seen.count(F) == count
        assert seen.count(F) <= failures and seen.count(INC) <= inconclusive
        assert S in seen  # a metric passes on evidence only
    elif phase is RunPhase.FAILED:
        assert seen[-1] is F and seen.count(F) == failures + 1
    elif phase is RunPhase.INCONCLUSIVE:
        assert seen[-1] is INC and seen.count(INC) == inconclusive + 1
    else:
        assert phase is RunPhase.ERROR and seen[-(errors + 1) :] == [E] * (errors + 1)


# ---- several metrics ----------------------------------------------------------------------------------


def test_the_worst_phase_wins() -> None:
    order = [RunPhase.FAILED, RunPhase.ERROR, RunPhase.INCONCLUSIVE, RunPhase.RUNNING, RunPhase.SUCCESSFUL]
    for size in range(1, len(order) + 1):
        for chosen in itertools.permutations(order, size):
            assert combine(chosen) is min(chosen, key=order.index)
    assert combine(iter([RunPhase.SUCCESSFUL, RunPhase.RUNNING])) is RunPhase.RUNNING
    with pytest.raises(ValueError, match="at least one metric"):
        combine([])
    with pytest.raises(ValueError, match="not run phases"):
        combine([RunPhase.RUNNING, "Paused"])  # type: ignore[list-item]


# ---- shapes and bad input -----------------------------------------------------------------------------


def test_measurements_round_trip_through_json() -> None:
    measured = judge(rule(NEAR_BASELINE), sample(0.93, baseline=0.92, devices=77), 1712.5)
    again = Measurement.from_dict(json.loads(json.dumps(measured.to_dict(), allow_nan=False)))
    assert again == measured


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"phase": "Passed"}, "measurement.phase"),
        ({"value": "0.9"}, "measurement.value"),
        ({"baseline": math.inf}, "measurement.baseline"),
        ({"devices": -1}, "measurement.devices"),
        ({"message": "x" * (MAX_MESSAGE_CHARS + 1)}, "measurement.message"),
        ({"at": None}, "measurement.at"),
        ({"extra": 1}, "measurement.extra"),
    ],
)
def test_bad_measurements_are_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    data = {**judge(rule(), sample(), 1.0).to_dict(), **change}
    with pytest.raises(InvalidField) as error:
        Measurement.from_dict(data)
    assert error.value.field == field


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: MetricRule("accuracy", None, None), "accuracy"),
        (lambda: MetricRule("", ACCURACY_OK, None), "name"),
        (lambda: MetricRule("accuracy", "result > 0.9", None), "accuracy.success"),
        (lambda: rule(count=-1), "accuracy.count"),
        (lambda: rule(failure_limit=-1), "accuracy.failure_limit"),
        (lambda: rule(consecutive_error_limit=True), "accuracy.consecutive_error_limit"),
        (lambda: rule(min_reporting_devices=0), "accuracy.min_reporting_devices"),
        (lambda: Sample(True, None, 1), "value"),
        (lambda: Sample(0.5, "0.4", 1), "baseline"),
        (lambda: Sample(0.5, None, -1), "reporting_devices"),
        (lambda: Sample(10**400, None, 1), "value"),
        (lambda: judge(rule(), sample(), math.nan), "at"),
    ],
)
def test_bad_rules_and_samples_are_refused_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(InvalidField) as error:
        make()
    assert error.value.field == field

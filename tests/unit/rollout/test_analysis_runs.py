"""Analysis runs between reconciliations: the tally judges as the whole history would; runs follow the step
machine's run ids; measurements are due by interval; the status round trip keeps what the phase needs."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fedfleet.api.manifest import load_rollout
from fedfleet.api.rollout_status import ModelRolloutStatus
from fedfleet.rollout.analysis import Measurement, MeasurementPhase, MetricRule, RunPhase, Sample, Tally, run_phase
from fedfleet.rollout.analysis_runs import (
    MetricRun,
    due,
    record,
    results,
    rules_for,
    runs_from_status,
    runs_to_status,
    sync,
)
from fedfleet.rollout.conditions import compile_condition
from fedfleet.rollout.step_state import StepState

EXAMPLE = Path(__file__).parents[3] / "examples" / "rollout.yaml"
SPEC = load_rollout(EXAMPLE).spec
RULES = rules_for(SPEC)


@given(
    phases=st.lists(st.sampled_from(list(MeasurementPhase)), max_size=40),
    count=st.integers(1, 6),
    failure_limit=st.integers(0, 5),
    inconclusive_limit=st.integers(0, 3),
    error_limit=st.integers(0, 3),
)
def test_tally_judges_as_run_phase_over_the_whole_history(
    phases: list[MeasurementPhase], count: int, failure_limit: int, inconclusive_limit: int, error_limit: int
) -> None:
    if failure_limit >= count:
        failure_limit = count - 1
    rule = MetricRule(
        "m",
        compile_condition("result > 0.5", "c"),
        None,
        count=count,
        failure_limit=failure_limit,
        inconclusive_limit=inconclusive_limit,
        consecutive_error_limit=error_limit,
    )
    tally = Tally()
    history: list[Measurement] = []
    for index, phase in enumerate(phases):
        measurement = Measurement(phase, None, None, 0, "", float(index))
        history.append(measurement)
        tally = tally.after(rule, measurement)
        assert tally.phase is run_phase(rule, history)


def test_an_analysis_step_wants_its_metrics_and_the_background_its_own() -> None:
    analysis_step = next(i for i, step in enumerate(SPEC.steps) if step.analysis is not None)
    state = StepState(step_index=analysis_step, step_run=7, background_run=3)
    runs = sync([], SPEC, state)
    assert {(r.metric, r.run, r.step) for r in runs} == {("accuracy", 7, analysis_step), ("activation-failures", 3, -1)}
    # A new run id (retry, next analysis step) starts empty; the kept one keeps its measurements.
    measured = [record(runs[0], RULES[runs[0].metric], Sample(0.9, 0.9, 10), 100.0), runs[1]]
    again = sync(measured, SPEC, StepState(step_index=analysis_step, step_run=8, background_run=3))
    assert [len(r.measurements) for r in again if r.run == 8] == [0]
    assert [len(r.measurements) for r in again if r.run == 3] == [len(measured[1].measurements)]


def test_measurements_are_due_by_interval() -> None:
    state = StepState(step_index=1, step_run=1, background_run=None)
    [run] = sync([], SPEC, state)
    assert due([run], SPEC, 1000.0)
    run = record(run, RULES["accuracy"], Sample(0.9, 0.91, 10), 1000.0)
    assert not due([run], SPEC, 1029.0)  # the example's interval is 30s
    assert due([run], SPEC, 1030.0)


def test_results_combine_the_current_runs_only() -> None:
    state = StepState(step_index=1, step_run=2, background_run=1)
    runs = sync([], SPEC, state)
    step_result, background = results(runs, state)
    assert step_result is not None and step_result.run == 2 and step_result.phase is RunPhase.RUNNING
    assert background is not None and background.run == 1
    bad = [record(r, RULES[r.metric], Sample(0.5, 0.95, 10), 10.0) if r.metric == "accuracy" else r for r in runs]
    step_result, _ = results(bad, state)
    assert step_result is not None and step_result.phase is RunPhase.FAILED


def test_no_data_is_never_success() -> None:
    state = StepState(step_index=1, step_run=1)
    [run] = sync([], SPEC, state)
    for at in (0.0, 30.0):
        run = record(run, RULES["accuracy"], Sample(None, 0.9, 0), at)
    assert run.phase is RunPhase.INCONCLUSIVE  # the example tolerates one inconclusive measurement


def test_status_round_trip_keeps_the_tally_and_the_latest_measurements() -> None:
    state = StepState(step_index=1, step_run=1)
    [run] = sync([], SPEC, state)
    for index in range(14):
        run = record(run, RULES["accuracy"], Sample(None if index % 2 else 0.9, 0.9, 10), 30.0 * index)
    status = ModelRolloutStatus.model_validate({"analysisRuns": runs_to_status([run])})
    [back] = runs_from_status(status.analysis_runs)
    assert back.tally == run.tally
    assert back.measurements == run.measurements
    assert isinstance(back, MetricRun) and back.phase is run.phase

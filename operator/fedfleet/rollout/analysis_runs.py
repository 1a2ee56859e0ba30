"""The analysis runs of a rollout between reconciliations: which metrics to measure now, and what the runs
say to the step machine. Pure; the controller (operator or embedded runtime) does the measuring.

A run is one metric measured for one run id the step machine handed out (`StepState.step_run` for the
current analysis step, `background_run` for the background metrics). The rollout's status keeps only the
latest measurements of a run (for people to read), so a run also carries its `analysis.Tally`, the counters
`run_phase` folds over the whole history: a long run judged over many reconciliations ends as it would have
if every measurement had been kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from fedfleet.api.duration import parse_duration
from fedfleet.api.modelrollout import MetricSpec, ModelRolloutSpec
from fedfleet.api.rollout_status import BACKGROUND_STEP, MAX_MEASUREMENTS, AnalysisRunStatus
from fedfleet.rollout.analysis import (
    Measurement,
    MeasurementPhase,
    MetricRule,
    RunPhase,
    Sample,
    Tally,
    combine,
    judge,
)
from fedfleet.rollout.conditions import compile_condition
from fedfleet.rollout.step_state import StepState
from fedfleet.rollout.steps import RunResult
from fedfleet.rollout.timestamps import epoch, rfc3339, whole_seconds


@dataclass(frozen=True)
class MetricRun:
    metric: str
    run: int
    step: int  # the analysis step it gates; BACKGROUND_STEP for background metrics
    tally: Tally = field(default_factory=Tally)
    measurements: tuple[Measurement, ...] = ()  # the latest MAX_MEASUREMENTS, oldest first

    @property
    def phase(self) -> RunPhase:
        return self.tally.phase

    @property
    def last_at(self) -> float | None:
        return self.measurements[-1].at if self.measurements else None


@dataclass(frozen=True)
class Due:
    """A measurement to take now: which metric, for which run."""

    metric: MetricSpec
    run: MetricRun


def rules_for(spec: ModelRolloutSpec) -> dict[str, MetricRule]:
    """Each metric's rule, its conditions compiled; a condition that does not compile raises `InvalidField`
    naming `spec.analysis.metrics[i].successCondition` (or failureCondition)."""
    rules: dict[str, MetricRule] = {}
    for index, metric in enumerate(spec.analysis.metrics):
        where = f"spec.analysis.metrics[{index}]"
        success = (
            compile_condition(metric.success_condition, f"{where}.successCondition")
            if metric.success_condition
            else None
        )
        failure = (
            compile_condition(metric.failure_condition, f"{where}.failureCondition")
            if metric.failure_condition
            else None
        )
        rules[metric.name] = MetricRule(
            name=metric.name,
            success=success,
            failure=failure,
            count=metric.count,
            failure_limit=metric.failure_limit,
            inconclusive_limit=metric.inconclusive_limit,
            consecutive_error_limit=metric.consecutive_error_limit,
            min_reporting_devices=metric.min_reporting_devices,
        )
    return rules


def wanted(spec: ModelRolloutSpec, state: StepState) -> list[tuple[str, int, int]]:
    """(metric, run, step) of every run the step machine wants measured now."""
    runs: list[tuple[str, int, int]] = []
    steps = spec.steps
    if state.step_run is not None and state.step_index < len(steps):
        step = steps[state.step_index]
        if step.analysis is not None:
            runs += [(name, state.step_run, state.step_index) for name in step.analysis.metrics]
    if state.background_run is not None:
        runs += [(name, state.background_run, BACKGROUND_STEP) for name in spec.analysis.background]
    return runs


def sync(existing: Iterable[MetricRun], spec: ModelRolloutSpec, state: StepState) -> list[MetricRun]:
    """The runs to keep: those still wanted, with their measurements, plus new empty ones."""
    by_key = {(run.metric, run.run, run.step): run for run in existing}
    return [by_key.get(key) or MetricRun(*key) for key in wanted(spec, state)]


def due(runs: Sequence[MetricRun], spec: ModelRolloutSpec, now: float) -> list[Due]:
    """The running runs whose interval has passed since their last measurement (or that have none)."""
    metrics = {metric.name: metric for metric in spec.analysis.metrics}
    found = []
    for run in runs:
        metric = metrics.get(run.metric)
        if metric is None or run.phase is not RunPhase.RUNNING:
            continue
        last = run.last_at
        if last is None or now - last >= parse_duration(metric.interval):
            found.append(Due(metric, run))
    return found


def record(run: MetricRun, rule: MetricRule, sample: Sample, now: float) -> MetricRun:
    measurement = judge(rule, sample, whole_seconds(now))  # the status keeps whole seconds
    kept = (*run.measurements, measurement)[-MAX_MEASUREMENTS:]
    return replace(run, tally=run.tally.after(rule, measurement), measurements=kept)


def results(runs: Sequence[MetricRun], state: StepState) -> tuple[RunResult | None, RunResult | None]:
    """What the step machine reads: the current step's run and the background run, each over its metrics."""

    def result_of(run_id: int | None, background: bool) -> RunResult | None:
        if run_id is None:
            return None
        phases = [r.phase for r in runs if r.run == run_id and (r.step == BACKGROUND_STEP) == background]
        return RunResult(run_id, combine(phases)) if phases else None

    return result_of(state.step_run, False), result_of(state.background_run, True)


def runs_to_status(runs: Sequence[MetricRun]) -> list[dict[str, object]]:
    """The runs as `status.analysisRuns` (see fedfleet.api.rollout_status.AnalysisRunStatus)."""
    return [
        {
            "metric": run.metric,
            "run": run.run,
            "step": run.step,
            "phase": run.phase.value,
            "tally": {
                "failed": run.tally.failed,
                "inconclusive": run.tally.inconclusive,
                "consecutiveErrors": run.tally.consecutive_errors,
                "verdicts": run.tally.verdicts,
            },
            "measurements": [_measurement_status(m) for m in run.measurements],
        }
        for run in runs
    ]


def runs_from_status(entries: Iterable[AnalysisRunStatus]) -> list[MetricRun]:
    return [
        MetricRun(
            metric=entry.metric,
            run=entry.run,
            step=entry.step,
            tally=Tally(
                failed=entry.tally.failed,
                inconclusive=entry.tally.inconclusive,
                consecutive_errors=entry.tally.consecutive_errors,
                verdicts=entry.tally.verdicts,
                phase=RunPhase(entry.phase.value),
            ),
            measurements=tuple(
                Measurement(
                    phase=MeasurementPhase(m.phase.value),
                    value=m.value,
                    baseline=m.baseline,
                    devices=m.devices or 0,
                    message=m.message,
                    at=epoch(m.at) or 0.0,
                )
                for m in entry.measurements
            ),
        )
        for entry in entries
    ]


def _measurement_status(measurement: Measurement) -> dict[str, object]:
    return {
        "phase": measurement.phase.value,
        "value": measurement.value,
        "baseline": measurement.baseline,
        "devices": measurement.devices,
        "at": rfc3339(measurement.at),
        "message": measurement.message[:1024],
    }

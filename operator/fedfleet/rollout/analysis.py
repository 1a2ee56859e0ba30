"""Analysis bookkeeping with Argo Rollouts' semantics: judge each measurement, then the run of them.

`judge` turns one sample of a metric into a Measurement. No data never passes (Flagger's rule): a query
that failed is an Error, and no value (Prometheus returned nothing), NaN, or fewer reporting devices than
the metric asks for is Inconclusive — never Successful. Otherwise the conditions decide, as in Argo's
`EvaluateResult`: failure condition true → Failed; success condition true → Successful; with only a
success condition, false → Failed; with only a failure condition, false → Successful; with both and
neither true → Inconclusive (the value is in the grey zone between the two, so a human decides). A
condition that cannot be evaluated (e.g. `baseline` is null and used in arithmetic) is an Error.

`run_phase` reads a metric's measurements in order, as Argo's `assessMetricStatus` does on each reconcile:
Failed once failures exceed `failure_limit`, Error once consecutive errors exceed
`consecutive_error_limit`, Inconclusive once inconclusive measurements exceed `inconclusive_limit`,
Successful once `count` measurements with a verdict (Successful or Failed) were taken without that, else
Running. Error and Inconclusive measurements carry no verdict: they are retried, bounded by their limits,
and do not count towards `count`; any other measurement ends a streak of errors. `count` 0 means no end:
the metric runs (as background analysis) until a limit trips. `failure_limit` must be below a non-zero
`count`, or a metric could pass with every measurement failed; so a Successful metric always saw at least
one Successful measurement.

`combine` is the run's phase over several metrics: the worst of them, Failed > Error > Inconclusive >
Running > Successful (Argo's order).

Where this differs from Argo Rollouts:
- Inconclusive measurements do not count towards `count` (Argo counts them). Otherwise one no-data
  measurement, tolerated by `inconclusiveLimit`, would complete a `count: 1` metric as Successful.
- `failure_limit` ≥ `count` > 0 is refused (Argo accepts it, and then passes a metric that only failed).
- A phase, once reached, is kept: `run_phase` stops at the first measurement that ends the metric and
  ignores any after it, so a late measurement cannot turn a Failed metric Successful. (Argo stores the
  phase in the AnalysisRun's status and returns it unchanged; here the measurements are the only state.)
- `combine` reports a terminal bad phase at once, while other metrics still run; Argo instead terminates
  the others and then reports the worst, which ends the same way.
- No data is Inconclusive here for every provider; Argo leaves an empty result to each provider (its
  Prometheus provider errors on an empty vector and is Inconclusive only for NaN).
- Argo's defaults are `failureLimit` 0, `inconclusiveLimit` 0 and `consecutiveErrorLimit` 4; so are the
  defaults here, plus `min_reporting_devices` 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

from fedfleet.rollout.conditions import Condition, ConditionError
from fedfleet.rollout.errors import InvalidField

#: Longest message a measurement keeps: it is shown in the rollout's status, and errors come from outside.
MAX_MESSAGE_CHARS = 512


class MeasurementPhase(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class RunPhase(StrEnum):
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


#: Worst first: the order `combine` picks by.
_WORST_FIRST = (RunPhase.FAILED, RunPhase.ERROR, RunPhase.INCONCLUSIVE, RunPhase.RUNNING, RunPhase.SUCCESSFUL)


@dataclass(frozen=True)
class MetricRule:
    """One metric of an analysis: how to judge a measurement and when the run of them is over."""

    name: str
    success: Condition | None
    failure: Condition | None
    count: int = 1  # measurements with a verdict to take; 0: no end (background analysis)
    failure_limit: int = 0
    inconclusive_limit: int = 0
    consecutive_error_limit: int = 4
    min_reporting_devices: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidField("name", "must be a non-empty string")
        for name in ("success", "failure"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), Condition):
                raise InvalidField(f"{self.name}.{name}", "must be a compiled Condition or None")
        if self.success is None and self.failure is None:
            raise InvalidField(f"{self.name}", "needs a successCondition, a failureCondition or both")
        for name, least in (
            ("count", 0),
            ("failure_limit", 0),
            ("inconclusive_limit", 0),
            ("consecutive_error_limit", 0),
            # At least one device must report: a measurement of nobody is no data, and no data never passes.
            ("min_reporting_devices", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidField(f"{self.name}.{name}", f"must be an integer of at least {least}")
        if self.count and self.failure_limit >= self.count:
            raise InvalidField(
                f"{self.name}.failure_limit",
                f"must be below count ({self.count}), or the metric passes with every measurement failed",
            )


@dataclass(frozen=True)
class Sample:
    """What a provider returned for one measurement of a metric."""

    value: float | None  # the canary's value; None when the query returned nothing
    baseline: float | None  # the control cohort's or stable version's value; None when there is none
    reporting_devices: int  # devices whose reports the value is made of
    error: str | None = None  # the query failed (Prometheus unreachable, bad PromQL, ...)

    def __post_init__(self) -> None:
        for name in ("value", "baseline"):
            value = getattr(self, name)
            if value is not None and not _fits_a_double(value):
                raise InvalidField(name, "must be a number that fits in a double, or None")
        if (
            isinstance(self.reporting_devices, bool)
            or not isinstance(self.reporting_devices, int)
            or self.reporting_devices < 0
        ):
            raise InvalidField("reporting_devices", "must be a non-negative integer")
        if self.error is not None and not isinstance(self.error, str):
            raise InvalidField("error", "must be a string or None")


@dataclass(frozen=True)
class Measurement:
    """One judged sample, as it is kept in the rollout's status."""

    phase: MeasurementPhase
    value: float | None  # None when there was no value (NaN is kept as None too: JSON has no NaN)
    baseline: float | None
    devices: int
    message: str
    at: float  # unix seconds, from the caller's clock

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "value": self.value,
            "baseline": self.baseline,
            "devices": self.devices,
            "message": self.message,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: object, field: str = "measurement") -> Measurement:
        if not isinstance(data, dict):
            raise InvalidField(field, "must be an object")
        unknown = sorted(str(k) for k in data if k not in _MEASUREMENT_KEYS)
        if unknown:
            raise InvalidField(f"{field}.{unknown[0]}", f"unknown field; expected {', '.join(_MEASUREMENT_KEYS)}")
        try:
            phase = MeasurementPhase(str(data.get("phase")))
        except ValueError:
            allowed = ", ".join(p.value for p in MeasurementPhase)
            raise InvalidField(f"{field}.phase", f"must be one of {allowed}") from None
        numbers = {}
        for name in ("value", "baseline"):
            number = data.get(name)
            if number is not None and not _is_finite_number(number):
                raise InvalidField(f"{field}.{name}", "must be a finite number or null")
            numbers[name] = None if number is None else float(number)
        devices, message, at = data.get("devices"), data.get("message"), data.get("at")
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 0:
            raise InvalidField(f"{field}.devices", "must be a non-negative integer")
        if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
            raise InvalidField(f"{field}.message", f"must be a string of at most {MAX_MESSAGE_CHARS} characters")
        if not isinstance(at, int | float) or not _is_finite_number(at):
            raise InvalidField(f"{field}.at", "must be a finite number (unix seconds)")
        return cls(phase, numbers["value"], numbers["baseline"], devices, message, float(at))


_MEASUREMENT_KEYS = ("phase", "value", "baseline", "devices", "message", "at")


def judge(rule: MetricRule, sample: Sample, at: float) -> Measurement:
    """Judge one sample of `rule`'s metric, taken at `at`."""
    if not _is_finite_number(at):
        raise InvalidField("at", "must be a finite number (unix seconds)")
    value = None if sample.value is None or math.isnan(sample.value) else float(sample.value)
    # A NaN baseline is no baseline: the control cohort had no data, and conditions test `baseline != null`.
    baseline = None if sample.baseline is None or math.isnan(sample.baseline) else float(sample.baseline)
    devices = sample.reporting_devices

    def measured(phase: MeasurementPhase, message: str) -> Measurement:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        return Measurement(phase, _json_safe(value), _json_safe(baseline), devices, message, at)

    if sample.error is not None:
        return measured(MeasurementPhase.ERROR, f"query failed: {sample.error}")
    if value is None:
        what = "NaN" if sample.value is not None else "no value"
        return measured(MeasurementPhase.INCONCLUSIVE, f"no data: the query returned {what}")
    if devices < rule.min_reporting_devices:
        return measured(
            MeasurementPhase.INCONCLUSIVE,
            f"no data: {devices} devices reported, fewer than the {rule.min_reporting_devices} required",
        )
    try:
        failed = rule.failure is not None and rule.failure.evaluate(value, baseline, devices)
        succeeded = rule.success is not None and rule.success.evaluate(value, baseline, devices)
    except ConditionError as error:
        return measured(MeasurementPhase.ERROR, str(error))
    shown = f"result {value:g}" + (f", baseline {baseline:g}" if baseline is not None else "") + f", {devices} devices"
    if failed:
        return measured(MeasurementPhase.FAILED, f"{shown}: failureCondition met")
    if succeeded:
        return measured(MeasurementPhase.SUCCESSFUL, f"{shown}: successCondition met")
    if rule.failure is None:
        return measured(MeasurementPhase.FAILED, f"{shown}: successCondition not met")
    if rule.success is None:
        return measured(MeasurementPhase.SUCCESSFUL, f"{shown}: failureCondition not met")
    return measured(MeasurementPhase.INCONCLUSIVE, f"{shown}: neither successCondition nor failureCondition met")


@dataclass(frozen=True)
class Tally:
    """What a run's phase is judged on, measurement after measurement: a rollout's status keeps only the
    latest measurements, so the controller carries this instead of the whole history."""

    failed: int = 0
    inconclusive: int = 0
    consecutive_errors: int = 0
    verdicts: int = 0
    phase: RunPhase = RunPhase.RUNNING

    def after(self, rule: MetricRule, measurement: Measurement) -> Tally:
        if self.phase is not RunPhase.RUNNING:
            return self  # a phase once reached is kept: what follows it does not count
        failed, inconclusive, errors, verdicts = self.failed, self.inconclusive, self.consecutive_errors, self.verdicts
        if measurement.phase is MeasurementPhase.ERROR:
            errors += 1
        else:
            errors = 0
            if measurement.phase is MeasurementPhase.INCONCLUSIVE:
                inconclusive += 1
            else:
                verdicts += 1
                failed += measurement.phase is MeasurementPhase.FAILED
        # One measurement moves one counter, so at most one of these starts to hold at each step.
        phase = RunPhase.RUNNING
        if failed > rule.failure_limit:
            phase = RunPhase.FAILED
        elif errors > rule.consecutive_error_limit:
            phase = RunPhase.ERROR
        elif inconclusive > rule.inconclusive_limit:
            phase = RunPhase.INCONCLUSIVE
        elif rule.count and verdicts >= rule.count:
            phase = RunPhase.SUCCESSFUL
        return Tally(failed, inconclusive, errors, verdicts, phase)


def run_phase(rule: MetricRule, measurements: Sequence[Measurement]) -> RunPhase:
    """The phase of `rule`'s metric after `measurements` (oldest first)."""
    tally = Tally()
    for measurement in measurements:
        tally = tally.after(rule, measurement)
    return tally.phase


def combine(phases: Iterable[RunPhase]) -> RunPhase:
    """The phase of an analysis of several metrics: the worst of theirs."""
    present = set(phases)
    if not present:
        raise ValueError("an analysis needs at least one metric to have a phase")
    unknown = present.difference(_WORST_FIRST)
    if unknown:
        raise ValueError(f"not run phases: {sorted(map(str, unknown))}")
    return next(phase for phase in _WORST_FIRST if phase in present)


def _fits_a_double(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:  # an int beyond 1.8e308
        return False
    return True


def _is_finite_number(value: object) -> bool:
    return _fits_a_double(value) and math.isfinite(value)


def _json_safe(value: float | None) -> float | None:
    # ±inf is a value Prometheus can return and the conditions judge; JSON cannot carry it, the message does.
    return value if value is None or math.isfinite(value) else None

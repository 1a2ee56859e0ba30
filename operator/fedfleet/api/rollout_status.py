"""Typed status of the ModelRollout resource: where the rollout stands, what the gate measured, its conditions.

The operator is its only writer. Its step machine (`fedfleet.rollout.steps`) owns the progress fields
(`revision` … `handledAction`, the run ids); the controller adds `observedGeneration`, `release` (the signed
release record), `analysisRuns` and `conditions` (from `fedfleet.rollout.health`). Users never write `spec` to
act on a rollout: `kubectl fedfleet promote` and friends ask through an annotation, and `handledAction` records
the last request handled, so a request is carried out once.

Conditions follow metav1.Condition and kstatus like a FederatedJob's: Argo-style `Progressing`, `Paused`,
`Degraded` and `Healthy`, plus `Ready`, `Reconciling` and `Stalled` for Flux and Argo CD.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from fedfleet.api.modelrollout import DIGEST_CHARS, DIGEST_PATTERN, DNS_LABEL_CHARS, DNS_LABEL_PATTERN
from fedfleet.api.status import REASON_PATTERN, Condition, StatusModel

_DATE_TIME: dict[str, Any] = {"format": "date-time"}
#: Measurements kept per analysis run in the status: the latest ones, enough to show a trend.
MAX_MEASUREMENTS = 10
#: Analysis runs kept in the status: the current step's and the background ones, each one per metric.
MAX_ANALYSIS_RUNS = 64
#: The `step` of a background analysis run, which belongs to no step.
BACKGROUND_STEP = -1


class RolloutPhase(StrEnum):
    PENDING = "Pending"  # waiting for the model (the FederatedJob has not published it yet)
    PROGRESSING = "Progressing"  # stepping: weights, timed pauses, analyses
    PAUSED = "Paused"  # waiting for a person: `pause: {}`, `kubectl fedfleet pause`, an inconclusive analysis
    DEGRADED = "Degraded"  # aborted: weight 0, every device back on stable; `retry` or a new model goes on
    HEALTHY = "Healthy"  # every step done: the candidate is the fleet's stable version


class RolloutConditionType(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    DEGRADED = "Degraded"
    HEALTHY = "Healthy"
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class RolloutReason(StrEnum):
    """Reasons in the status, its conditions and the Events of a rollout."""

    NEW_REVISION = "NewRevision"
    WAITING_FOR_MODEL = "WaitingForModel"
    MODEL_AVAILABLE = "ModelAvailable"
    ALREADY_STABLE = "AlreadyStable"
    WEIGHT_SET = "WeightSet"
    TIMED_PAUSE = "TimedPause"
    WAITING_FOR_PROMOTION = "WaitingForPromotion"
    ANALYSIS_RUNNING = "AnalysisRunning"
    ANALYSIS_SUCCESSFUL = "AnalysisSuccessful"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_ERROR = "AnalysisError"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    BACKGROUND_ANALYSIS_FAILED = "BackgroundAnalysisFailed"
    BACKGROUND_ANALYSIS_ERROR = "BackgroundAnalysisError"
    BACKGROUND_ANALYSIS_INCONCLUSIVE = "BackgroundAnalysisInconclusive"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    PAUSED_BY_USER = "PausedByUser"
    RESUMED = "Resumed"
    PROMOTED = "Promoted"
    PROMOTED_FULL = "PromotedFull"
    ABORTED = "Aborted"
    RETRIED = "Retried"
    STEPS_CHANGED = "StepsChanged"
    ACTION_IGNORED = "ActionIgnored"
    ROLLOUT_COMPLETED = "RolloutCompleted"


class AnalysisRunPhase(StrEnum):
    """The phase of an analysis run or measurement; the same names as `fedfleet.rollout`'s RunPhase."""

    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class MeasurementStatus(StatusModel):
    phase: AnalysisRunPhase = Field(..., description="Successful, Failed, Inconclusive or Error.")
    value: float | None = Field(None, description="The candidate's number (`result`); absent when there was none.")
    baseline: float | None = Field(None, description="The baseline's number; absent when there was none.")
    devices: int | None = Field(None, ge=0, description="Devices that had reported on the candidate.")
    at: str = Field(..., json_schema_extra=_DATE_TIME, description="When it was measured (RFC 3339).")
    message: str = Field("", max_length=1024, description="Why, for humans: an error, or too few devices.")


class RunTally(StatusModel):
    """The counters the run's phase is judged on (the status keeps only the latest measurements)."""

    failed: int = Field(0, ge=0, description="Failed measurements.")
    inconclusive: int = Field(0, ge=0, description="Inconclusive measurements.")
    consecutive_errors: int = Field(0, ge=0, description="Errors since the last measurement that was not one.")
    verdicts: int = Field(0, ge=0, description="Successful or Failed measurements, towards the metric's count.")


class AnalysisRunStatus(StatusModel):
    metric: str = Field(..., max_length=DNS_LABEL_CHARS, pattern=DNS_LABEL_PATTERN, description="The metric.")
    run: int = Field(..., ge=0, description="The run's id: stepRun or backgroundRun when it was started.")
    step: int = Field(..., ge=BACKGROUND_STEP, description="The analysis step it gates; -1: background analysis.")
    phase: AnalysisRunPhase = Field(..., description="Running, Successful, Failed, Inconclusive or Error.")
    tally: RunTally = Field(default_factory=RunTally, description="What the phase is judged on.")
    measurements: list[MeasurementStatus] = Field(
        default_factory=list, max_length=MAX_MEASUREMENTS, description="The latest measurements, oldest first."
    )


class DeviceCount(StatusModel):
    version: str = Field("", max_length=DIGEST_CHARS, description="The version devices run (a digest, none or other).")
    role: str = Field("", max_length=16, description="stable, canary, control or outside.")
    count: int = Field(0, ge=0, description="Devices the gateway saw in its last check-in window.")


class ModelRolloutStatus(StatusModel):
    # --- written by the controller ---------------------------------------------------------------------
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the operator last reconciled.")
    # --- the step machine's state (fedfleet.rollout.steps.StepState) --------------------------------------
    phase: RolloutPhase | None = Field(None, description="Pending, Progressing, Paused, Degraded or Healthy.")
    revision: int | None = Field(None, ge=0, description="Counts spec.model changes; each starts again at step 0.")
    model_key: str | None = Field(None, max_length=512, description="What spec.model named for this revision.")
    step_index: int | None = Field(None, ge=0, description="The current step; the number of steps once done.")
    steps_hash: str | None = Field(
        None, max_length=64, description="Identifies spec.steps; when they change, the steps start again at 0."
    )
    weight: int | None = Field(None, ge=0, le=100, description="Percent of the selected devices on the candidate.")
    stable: str | None = Field(
        None, max_length=DIGEST_CHARS, pattern=DIGEST_PATTERN, description="The version every other device runs."
    )
    candidate: str | None = Field(
        None, max_length=DIGEST_CHARS, pattern=DIGEST_PATTERN, description="The version being rolled out (canary)."
    )
    salt: str | None = Field(None, max_length=128, description="Keys the devices' cohort buckets.")
    reason: str | None = Field(None, max_length=128, pattern=REASON_PATTERN, description="Why, in one CamelCase word.")
    message: str | None = Field(None, max_length=4096, description="Why, for humans.")
    step_started_at: str | None = Field(
        None, json_schema_extra=_DATE_TIME, description="When the current step started, or was last resumed."
    )
    revision_started_at: str | None = Field(
        None, json_schema_extra=_DATE_TIME, description="When the current revision started."
    )
    paused_by_user: bool | None = Field(None, description="`kubectl fedfleet pause`: held until resumed or promoted.")
    aborted_at: str | None = Field(None, json_schema_extra=_DATE_TIME, description="When the revision was aborted.")
    handled_action: str | None = Field(None, max_length=256, description="The last user action carried out (its id).")
    run_serial: int | None = Field(None, ge=0, description="The last analysis run id handed out.")
    step_run: int | None = Field(None, ge=0, description="The id of the current analysis step's run.")
    background_run: int | None = Field(None, ge=0, description="The id of the current background analysis run.")
    # --- written by the controller ---------------------------------------------------------------------
    stable_published: int | None = Field(
        None,
        ge=0,
        description="The revision whose completion made its version the fleet's stable one, once the fleet's view "
        "says so: a finished rollout sets the fleet's stable version once, never again over a newer rollout's.",
    )
    release: dict[str, Any] | None = Field(
        None,
        description="The signed release record of the candidate (rollout, version, digest, size, signature, ...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    analysis_runs: list[AnalysisRunStatus] = Field(
        default_factory=list, max_length=MAX_ANALYSIS_RUNS, description="The current analysis runs, per metric."
    )
    devices: list[DeviceCount] = Field(
        default_factory=list,
        max_length=16,
        description="Devices by version and role, as the fleet gateway counts them.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Progressing, Paused, Degraded, Healthy, Ready, Reconciling and Stalled.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )

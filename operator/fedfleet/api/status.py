"""Typed status of the FederatedJob resource: conditions, progress and where devices connect.

Two writers share `status`, each owning its own fields, so their merge patches never undo each other:

* the **operator** writes `observedGeneration`, `phase`, `conditions`, `startTime`, `completionTime`,
  `endpoint` and `aggregatorPod`;
* the **aggregator** (through its ServiceAccount, which may patch only this job's status) writes the
  progress fields: `round`, `participants`, `dropped`, `churn`, `epsilonSpent`, `accuracy`, `lastRoundTime`
  and, once it has stopped for good, `outcome`.

Conditions follow the Kubernetes API conventions (metav1.Condition) and kstatus, so Flux and Argo CD can
read health: `Ready`, `Reconciling` and `Stalled`, plus the job's own `Running`, `Complete` and `Failed`;
the last two are terminal and never go back to False. A complete job whose aggregator publishes to the fleet
gateway also gets `ModelPublished`. The CRD's status schema is generated from these
models, like the spec's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: metav1.Condition's reason pattern: CamelCase, starting with a letter.
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
_DATE_TIME: dict[str, Any] = {"format": "date-time"}


class StatusModel(BaseModel):
    """Base of the status sections: camelCase aliases; unknown fields ignored (an older operator may read a
    status that a newer aggregator wrote)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class ConditionType(StrEnum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    MODEL_PUBLISHED = "ModelPublished"


#: Conditions that, once True, stay True: the job has ended.
TERMINAL_CONDITIONS = frozenset({ConditionType.COMPLETE, ConditionType.FAILED})


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"


class Reason(StrEnum):
    """Reasons the operator and aggregator give in conditions and Events."""

    CREATING_AGGREGATOR = "CreatingAggregator"
    AGGREGATOR_STARTING = "AggregatorStarting"
    AGGREGATOR_RUNNING = "AggregatorRunning"
    AGGREGATOR_READY = "AggregatorReady"
    AGGREGATOR_NOT_READY = "AggregatorNotReady"
    AGGREGATOR_RECREATED = "AggregatorRecreated"
    UPDATING_AGGREGATOR = "UpdatingAggregator"
    WAITING_FOR_AGGREGATOR = "WaitingForAggregator"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    ROUNDS_COMPLETED = "RoundsCompleted"
    PRIVACY_BUDGET_EXHAUSTED = "PrivacyBudgetExhausted"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    INVALID_NAME = "InvalidName"
    # A child of the job the API server refused (operator/reconcile/child_failure.py): Failed when the same
    # request can never succeed (400, 422), Stalled while it may (403: PodSecurity, RBAC, quota; 5xx; ...).
    CHILD_INVALID = "ChildInvalid"
    CHILD_FORBIDDEN = "ChildForbidden"
    CHILD_REQUEST_FAILED = "ChildRequestFailed"
    CHILD_NAME_TAKEN = "ChildNameTaken"
    CRASH_LOOP = "CrashLoopBackOff"
    JOB_ENDED = "JobEnded"
    AS_EXPECTED = "AsExpected"
    MODEL_PUBLISHED = "ModelPublished"
    MODEL_NOT_PUBLISHED = "ModelNotPublished"


#: How the aggregator's outcome message says the final model could not be published (written by
#: aggregator/model_publishing.py, read by the operator for the ModelPublished condition).
NOT_PUBLISHED_MARK = "the model is not published: "


class Condition(StatusModel):
    type: str = Field(..., min_length=1, max_length=316, description="Ready, Reconciling, Stalled, Running, ...")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(
        ..., min_length=1, max_length=1024, pattern=REASON_PATTERN, description="Why, in one CamelCase word."
    )
    message: str = Field("", max_length=32768, description="Why, for humans.")
    last_transition_time: str = Field(
        ..., json_schema_extra=_DATE_TIME, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the condition was set from.")


class JobOutcome(StatusModel):
    """How the aggregator ended the job, written once it stops for good."""

    reason: str = Field(..., min_length=1, max_length=1024, pattern=REASON_PATTERN, description="e.g. RoundsCompleted.")
    message: str = Field("", max_length=32768, description="Details, for humans.")


#: How a published model is named: its artifact's sha256 (fedfleet.models.artifact.digest_of).
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class PublishedModel(StatusModel):
    """The job's final model as published to the fleet gateway: what a ModelRollout names as its candidate."""

    digest: str = Field(..., pattern=DIGEST_PATTERN, description="sha256:<64 hex> of the model artifact.")
    size: int = Field(..., ge=1, description="The artifact's bytes.")
    round: int = Field(..., ge=0, description="The round the model is the result of.")
    # Optional, not required-but-null: a merge patch's null removes a field, so "not measured" is "absent".
    accuracy: float | None = Field(None, ge=0, le=1, description="Server-side test accuracy; absent if not measured.")
    epsilon: float | None = Field(None, ge=0, description="Differential-privacy ε spent; absent without DP.")
    architecture: str = Field(..., min_length=1, max_length=64, description="The model's architecture.")
    published_at: str = Field(..., json_schema_extra=_DATE_TIME, description="When it was published (RFC 3339).")


class AggregatorPodStatus(StatusModel):
    name: str = Field(..., min_length=1, max_length=253, description="The aggregator pod.")
    uid: str = Field("", max_length=64, description="Its uid: a new uid means the pod was recreated.")
    phase: str = Field("", max_length=32, description="The pod's phase.")
    restarts: int = Field(0, ge=0, description="Container restarts of the aggregator.")


class FederatedJobStatus(StatusModel):
    # --- written by the operator ------------------------------------------------------------------------
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the operator last reconciled.")
    phase: Phase | None = Field(None, description="Pending, Running, Suspended, Complete or Failed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Ready, Reconciling, Stalled, Running, Complete and Failed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    start_time: str | None = Field(
        None, json_schema_extra=_DATE_TIME, description="When the aggregator last started running (deadline clock)."
    )
    completion_time: str | None = Field(None, json_schema_extra=_DATE_TIME, description="When the job ended.")
    endpoint: str | None = Field(None, max_length=512, description="host:port devices connect to (gRPC over TLS).")
    aggregator_pod: AggregatorPodStatus | None = Field(None, description="The aggregator pod the operator runs.")
    # --- written by the aggregator ----------------------------------------------------------------------
    round: int | None = Field(None, ge=0, description="Rounds completed (checkpointed).")
    participants: int | None = Field(None, ge=0, description="Updates aggregated in the latest round.")
    dropped: int | None = Field(None, ge=0, description="Invited devices that dropped out of the latest round.")
    churn: float | None = Field(None, ge=0, le=1, description="Share of invitations that ended dropped or late.")
    epsilon_spent: float | None = Field(None, ge=0, description="Differential-privacy ε spent so far.")
    accuracy: float | None = Field(None, ge=0, le=1, description="Server-side test accuracy of the latest model.")
    last_round_time: str | None = Field(None, json_schema_extra=_DATE_TIME, description="When the latest round ended.")
    outcome: JobOutcome | None = Field(None, description="How the aggregator ended the job.")
    model: PublishedModel | None = Field(None, description="The final model, once published to the fleet gateway.")

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def is_true(self, kind: ConditionType) -> bool:
        found = self.condition(kind)
        return found is not None and found.status == "True"

    @property
    def terminal(self) -> bool:
        return any(self.is_true(kind) for kind in TERMINAL_CONDITIONS)


#: Status fields the aggregator owns (wire names); the operator never writes them.
AGGREGATOR_FIELDS = (
    "round",
    "participants",
    "dropped",
    "churn",
    "epsilonSpent",
    "accuracy",
    "lastRoundTime",
    "outcome",
    "model",
)

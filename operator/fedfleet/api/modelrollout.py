"""Typed spec of the ModelRollout resource: ship a trained model to a device fleet in canary steps.

As for FederatedJob, these models are the single source of truth: `crds/modelrollout.yaml` is generated from
them (`make crds`), the operator and `fedfleet rollout` read a rollout through them, and the rules that span
fields are declared once, in `fedfleet.api.rollout_rules`, for both the models' check and the CRD's CEL.
Single-field bounds (ranges, patterns, lengths, list sizes) are `Field(...)` constraints here. Every string and
list is bounded: a manifest may be hostile, and the CRD's CEL rules are only accepted by the API server when
their cost is bounded, which it estimates from these very bounds.

The semantics follow Argo Rollouts' canary strategy: `steps` of `setWeight`, `pause` and `analysis`, and
`background` analysis for the whole rollout; see `fedfleet.rollout.steps` for the step machine.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fedfleet.api.duration import Duration, Interval
from fedfleet.api.federatedjob import API_GROUP as API_GROUP
from fedfleet.api.federatedjob import API_VERSION as API_VERSION
from fedfleet.api.federatedjob import ObjectMeta, SpecError, SpecModel
from fedfleet.api.rollout_rules import ROLLOUT_RULES

KIND = "ModelRollout"

#: A DNS label (RFC 1123): fleet and metric names, which also end up in Prometheus labels and object names.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_CHARS = 63
#: A Kubernetes object name (DNS subdomain), as metadata.name is checked: the FederatedJob a model comes from.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
OBJECT_NAME_CHARS = 253
#: A content address of a published model: what `fedfleet publish` prints and the gateway stores.
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DIGEST_CHARS = 71
#: Device attribute names and values, as Kubernetes label names and values (without a prefix/).
LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
LABEL_CHARS = 63
#: Condition and query texts: long enough for any real one, short enough to bound parsing and CEL cost.
CONDITION_CHARS = 1024
QUERY_CHARS = 4096

MAX_STEPS = 64
MAX_METRICS = 16
MAX_LABELS = 32
MAX_EXPRESSIONS = 16
MAX_VALUES = 64
#: A week: the longest a single step may go without progress before the rollout is aborted.
MAX_PROGRESS_DEADLINE_SECONDS = 7 * 24 * 3600

DnsLabel = Annotated[str, Field(min_length=1, max_length=DNS_LABEL_CHARS, pattern=DNS_LABEL_PATTERN)]
LabelValue = Annotated[str, Field(max_length=LABEL_CHARS, pattern=LABEL_VALUE_PATTERN)]


# --- the model to roll out --------------------------------------------------------------------------------


class ModelSource(SpecModel):
    """Which model to roll out: exactly one of federatedJob and artifact."""

    federated_job: str | None = Field(
        None,
        min_length=1,
        max_length=OBJECT_NAME_CHARS,
        pattern=OBJECT_NAME_PATTERN,
        description="The final model of this FederatedJob (same namespace); the rollout waits until it is published.",
    )
    artifact: str | None = Field(
        None,
        max_length=DIGEST_CHARS,
        pattern=DIGEST_PATTERN,
        description="A model already published to the fleet gateway (`fedfleet publish`), as sha256:<64 hex>.",
    )

    @property
    def key(self) -> str:
        """What this names, as one string: a change of key starts a new revision of the rollout."""
        if self.federated_job is not None:
            return f"federatedJob/{self.federated_job}"
        return f"artifact/{self.artifact}"


# --- which devices ------------------------------------------------------------------------------------------


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class SelectorRequirement(SpecModel):
    key: str = Field(..., min_length=1, max_length=LABEL_CHARS, pattern=LABEL_KEY_PATTERN, description="Attribute.")
    operator: SelectorOperator = Field(..., description="In, NotIn, Exists or DoesNotExist.")
    values: tuple[LabelValue, ...] = Field(
        (), max_length=MAX_VALUES, description="In and NotIn: at least one value; Exists and DoesNotExist: none."
    )


_KEY_RULE = f"self.all(k, size(k) <= {LABEL_CHARS} && k.matches('{LABEL_KEY_PATTERN}'))"


# Devices the selector does not select stay on the stable version.
class DeviceSelectorSpec(SpecModel):
    """Which devices take part, by their attributes (device class, OS, region, ...); empty: the whole fleet."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="Attributes a device must have, with these values.",
        # A map's keys have no schema keyword in a structural schema: a CEL rule checks them instead.
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": _KEY_RULE, "message": "keys must be attribute names"}]
        },
    )
    match_expressions: tuple[SelectorRequirement, ...] = Field(
        (), max_length=MAX_EXPRESSIONS, description="Requirements a device must meet, all of them."
    )

    @field_validator("match_labels")
    @classmethod
    def _keys_are_attribute_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if len(key) > LABEL_CHARS or not re.fullmatch(LABEL_KEY_PATTERN, key):
                shown = repr(key if len(key) <= LABEL_CHARS else key[:LABEL_CHARS] + "...")
                raise PydanticCustomError(
                    "attribute_name",
                    "key {key} is not an attribute name: at most {chars} letters, digits, '-', '_' and '.', "
                    "starting and ending with a letter or digit",
                    {"key": shown, "chars": LABEL_CHARS},
                )
        return labels


# --- analysis -----------------------------------------------------------------------------------------------


class Baseline(StrEnum):
    """What `baseline` means in a metric's conditions."""

    STABLE = "stable"  # the stable version, across the fleet outside the canary
    CONTROL = "control"  # the control cohort: as many devices as the canary, held on stable (needs controlCohort)
    NONE = "none"  # no baseline: `baseline` is null in the conditions


class BuiltinMetricName(StrEnum):
    """Metrics the embedded runtime computes from the gateway's own aggregates (no Prometheus)."""

    ACCURACY = "accuracy"
    LOSS = "loss"
    LATENCY_P99 = "latencyP99"
    ACTIVATION_FAILURE_RATE = "activationFailureRate"


class PrometheusQuery(SpecModel):
    query: str = Field(
        ...,
        min_length=1,
        max_length=QUERY_CHARS,
        description="PromQL giving one number. The controller substitutes {{version}} (the version measured: the "
        "candidate for `result`, then the baseline's version for `baseline`; the query runs once for each), "
        "{{baseline}} (the baseline's version, in both runs), {{fleet}} (spec.fleet) and {{rollout}} (this "
        "rollout's name). Versions are the gateway's version label values.",
    )


class BuiltinMetric(SpecModel):
    metric: BuiltinMetricName = Field(
        ..., description="accuracy, loss, latencyP99 or activationFailureRate, as devices reported them."
    )


class MetricProvider(SpecModel):
    """Where a metric's numbers come from: exactly one of prometheus and builtin."""

    prometheus: PrometheusQuery | None = Field(None, description="A PromQL query against spec.prometheus.")
    builtin: BuiltinMetric | None = Field(None, description="A metric of the embedded runtime (`fedfleet rollout`).")


# Each interval a metric is measured once; a run of `count` measurements passes, fails or is inconclusive by
# the limits (Argo Rollouts' semantics). No data never passes: fewer than minReportingDevices reports, or no
# answer, is an inconclusive measurement (fedfleet.rollout.analysis).
class MetricSpec(SpecModel):
    """One metric of the gate: a number per interval, judged by conditions, counted against limits."""

    name: DnsLabel = Field(..., description="Named by analysis steps and by analysis.background.")
    interval: Interval = Field("30s", description="Time between measurements, e.g. 30s or 5m.")
    count: int = Field(1, ge=1, le=1000, description="Measurements in one run.")
    failure_limit: int = Field(0, ge=0, le=1000, description="Failed measurements tolerated; one more fails the run.")
    inconclusive_limit: int = Field(
        0, ge=0, le=1000, description="Inconclusive measurements tolerated; one more makes the run inconclusive."
    )
    consecutive_error_limit: int = Field(
        4, ge=0, le=1000, description="Consecutive errors (e.g. Prometheus unreachable) tolerated; one more: Error."
    )
    min_reporting_devices: int = Field(
        10, ge=1, le=1_000_000, description="Fewest devices that must have reported for a measurement to count."
    )
    baseline: Baseline = Field(
        Baseline.STABLE,
        description="What `baseline` is in the conditions: stable (the stable version), control (the control "
        "cohort; needs controlCohort) or none (null).",
    )
    success_condition: str = Field(
        "",
        max_length=CONDITION_CHARS,
        description="CEL over result, baseline and devices, e.g. `result >= baseline - 0.02`; true passes.",
    )
    failure_condition: str = Field(
        "", max_length=CONDITION_CHARS, description="CEL over result, baseline and devices; true fails."
    )
    provider: MetricProvider = Field(..., description="Where the numbers come from.")


class AnalysisSpec(SpecModel):
    metrics: tuple[MetricSpec, ...] = Field(
        (), max_length=MAX_METRICS, description="The metrics analysis steps and background analysis name."
    )
    background: tuple[DnsLabel, ...] = Field(
        (), max_length=MAX_METRICS, description="Metrics measured during the whole rollout; a failure aborts it."
    )


class PrometheusSpec(SpecModel):
    address: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Base URL of the Prometheus HTTP API, e.g. http://prometheus.fedfleet-system.svc:9090.",
    )


# --- steps --------------------------------------------------------------------------------------------------


class PauseStep(SpecModel):
    duration: Duration | None = Field(None, description="How long to wait, e.g. 30s; absent: until promoted.")


class AnalysisStep(SpecModel):
    metrics: tuple[DnsLabel, ...] = Field(
        ..., min_length=1, max_length=MAX_METRICS, description="Metrics of spec.analysis that must pass to go on."
    )


class Step(SpecModel):
    """One step: exactly one of setWeight, pause and analysis."""

    set_weight: int | None = Field(
        None, ge=0, le=100, description="Percent of the selected devices that run the candidate from now on."
    )
    pause: PauseStep | None = Field(None, description="Wait a duration, or until promoted (`pause: {}`).")
    analysis: AnalysisStep | None = Field(None, description="Measure these metrics; go on only if they pass.")

    @property
    def kind(self) -> Literal["setWeight", "pause", "analysis"]:
        if self.set_weight is not None:
            return "setWeight"
        return "pause" if self.pause is not None else "analysis"


# --- the spec -----------------------------------------------------------------------------------------------


class ModelRolloutSpec(SpecModel):
    fleet: DnsLabel = Field("default", description="The device fleet to roll out to; it also names the signing key.")
    model: ModelSource = Field(..., description="The model to roll out; changing it starts a new revision at step 0.")
    selector: DeviceSelectorSpec = Field(default_factory=DeviceSelectorSpec)
    control_cohort: bool = Field(
        False,
        description="Hold as many devices as the canary on the stable version, as a concurrent baseline "
        "(`baseline: control`). Only up to a weight of 50.",
    )
    progress_deadline_seconds: int = Field(
        600,
        ge=1,
        le=MAX_PROGRESS_DEADLINE_SECONDS,
        description="Abort (reason ProgressDeadlineExceeded) when an analysis step has had no analysis running for "
        "this long. Pauses, and analyses still measuring, count as progress.",
    )
    prometheus: PrometheusSpec | None = Field(
        None, description="Where Prometheus metrics are queried; default: the operator's (set by the chart)."
    )
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    steps: tuple[Step, ...] = Field(..., max_length=MAX_STEPS, description="The canary steps, in order.")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelRolloutSpec:
        # The same table gives the CRD its CEL rules. One error, the first broken rule in table order.
        for rule in ROLLOUT_RULES:
            if not rule.holds(self):
                raise SpecError(rule.field, rule.explain(self))
        return self


class ModelRollout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    api_version: Literal["fedfleet.io/v1alpha1"] = Field(..., alias="apiVersion")
    kind: Literal["ModelRollout"]
    metadata: ObjectMeta
    spec: ModelRolloutSpec
    status: dict[str, Any] | None = None

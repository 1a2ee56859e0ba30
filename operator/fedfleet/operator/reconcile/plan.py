"""One reconciliation of a FederatedJob, as a pure function.

    plan = reconcile(job, observed, config, now, credentials)

`observed` is what exists of the job's children (read by k8s.py just before); the plan lists the children to
create or update, whether to delete the aggregator pod, the status patch (only the operator's fields, and only
those that change) and the Events to post. Applying a plan twice is harmless: creation is by fixed name, so a
second attempt ends in AlreadyExists, and an unchanged status produces an empty patch.

When the API server refuses one of the children, k8s.py stops applying the plan and `refused(job, failure, now)`
gives the plan that says so on the job instead: Stalled while a retry may succeed, Failed when it never can.

The life of a job: Pending (children created, aggregator starting) → Running (aggregator ready) → Complete
(the aggregator finished: all rounds, or it stopped early, e.g. PrivacyBudgetExhausted) or Failed
(DeadlineExceeded; InvalidSpec, from the models or from an aggregator that exited with bad input;
InvalidName; ChildInvalid). Suspended in between stops the aggregator pod; resuming recreates it and it
continues from its checkpoint. Complete and Failed are terminal: nothing is created again afterwards.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from fedfleet.api.aggregator_config import dump_config
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.api.status import NOT_PUBLISHED_MARK, Condition, ConditionType, FederatedJobStatus, Phase, Reason
from fedfleet.api.termination import refused_input
from fedfleet.operator import naming
from fedfleet.operator.config import OperatorConfig
from fedfleet.operator.job import InvalidSpec, JobRef
from fedfleet.operator.reconcile.child_failure import ChildFailure
from fedfleet.operator.reconcile.conditions import is_true, parse_rfc3339, rfc3339, set_condition
from fedfleet.operator.resources import (
    AGGREGATOR_CONTAINER,
    JobCredentials,
    aggregator_config,
    build_aggregator_pod,
    build_configmap,
    build_gateway_secret,
    build_role,
    build_rolebinding,
    build_secret,
    build_service,
    build_service_account,
    build_state_claim,
)

JSON = dict[str, Any]

#: Pod phases after which a pod runs nothing any more.
_FINISHED_POD_PHASES = frozenset({"Succeeded", "Failed"})
#: Waiting reasons of a container that will not fix themselves by waiting (kubelet vocabulary).
STUCK_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff", "InvalidImageName"}
)


@dataclass(frozen=True)
class Observed:
    """What exists of a job's children. `present` holds the kinds of the fixed-name children that exist."""

    pod: JSON | None = None
    present: frozenset[str] = frozenset()
    configmap_data: dict[str, str] | None = None
    gateway_secret: bool = False  # the job's copy of the fleet gateway's CA and publish token exists


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    create: tuple[JSON, ...] = ()
    update: tuple[JSON, ...] = ()  # objects whose content differs: merge-patched in place
    delete_pod: bool = False
    status: JSON = field(default_factory=dict)  # merge patch of the operator's status fields
    events: tuple[EventSpec, ...] = ()

    @property
    def idle(self) -> bool:
        return not (self.create or self.update or self.delete_pod or self.status or self.events)


class _Draft:
    """The status being decided, and the actions and Events collected on the way."""

    def __init__(self, job: JobRef, old: FederatedJobStatus, now: dt.datetime) -> None:
        self.job, self.old, self.now = job, old, now
        self.conditions: list[Condition] = list(old.conditions)
        self.fields: JSON = {
            "observedGeneration": job.generation,
            "phase": old.phase.value if old.phase else None,
            "startTime": old.start_time,
            "completionTime": old.completion_time,
            "endpoint": old.endpoint,
            "aggregatorPod": old.aggregator_pod.model_dump(by_alias=True) if old.aggregator_pod else None,
        }
        self.create: list[JSON] = []
        self.update: list[JSON] = []
        self.delete_pod = False
        self.events: list[EventSpec] = []

    def cond(self, kind: ConditionType, status: bool, reason: str, message: str = "") -> None:
        self.conditions = set_condition(self.conditions, kind, status, reason, message, self.now, self.job.generation)

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events.append(EventSpec(kind, reason, message))

    def end(self, phase: Phase) -> None:
        self.fields["phase"] = phase.value
        self.fields["completionTime"] = self.fields["completionTime"] or rfc3339(self.now)

    def plan(self) -> Plan:
        self.events.extend(_transition_events(self.old.conditions, self.conditions))
        self.events.extend(_phase_events(self.old.phase, self.fields["phase"]))
        # Failed and Stalled that turn True for the same reason would say the same thing twice.
        self.events = list(dict.fromkeys(self.events))
        self.fields["conditions"] = [c.model_dump(by_alias=True, exclude_none=True) for c in self.conditions]
        return Plan(
            create=tuple(self.create),
            update=tuple(self.update),
            delete_pod=self.delete_pod,
            status=_changed(self.job.body.get("status") or {}, self.fields),
            # Once each: Failed and Stalled turning True for the same cause would say the same thing twice.
            events=tuple(dict.fromkeys(self.events)),
        )


def reconcile(
    job: JobRef,
    observed: Observed,
    config: OperatorConfig,
    now: dt.datetime,
    credentials: JobCredentials | None = None,
) -> Plan:
    """Decide what to do for `job`. `credentials` are needed only when its Secret does not exist yet."""
    old = job.status()
    draft = _Draft(job, old, now)
    pod = observed.pod
    terminating = pod is not None and "deletionTimestamp" in pod["metadata"]
    # Stored before the CRD had the rule it breaks (CEL refuses such a job now): it can never run, so it fails
    # with the reason instead of having its children refused one by one.
    try:
        spec = job.spec()
    except InvalidSpec as exc:
        return _never_runs(draft, Reason.INVALID_SPEC, str(exc), pod, stop=pod is not None and not terminating)
    name_problem = job.name_problem()
    if name_problem is not None:
        return _never_runs(draft, Reason.INVALID_NAME, name_problem, pod, stop=pod is not None and not terminating)

    if old.terminal:
        # The job has ended: keep the record; a failed job's aggregator stays stopped.
        draft.delete_pod = old.is_true(ConditionType.FAILED) and pod is not None and not terminating
        if old.is_true(ConditionType.COMPLETE):
            _model_published(draft, old)
        _ended_pod(draft, pod)
        return draft.plan()

    # Rendered once: the ConfigMap holds this text and the pod's hash covers it.
    config_text = dump_config(aggregator_config(job.body, spec, config.gateway))
    _ensure_children(draft, observed, spec, config, config_text, credentials)

    if spec.suspend:
        _suspend(draft, stop=pod is not None and not terminating)
        return draft.plan()

    if _finished(old, spec, pod):
        _complete(draft, old, spec)
        _ended_pod(draft, pod)
        return draft.plan()

    deadline = spec.active_deadline_seconds
    started = parse_rfc3339(old.start_time) if old.start_time else None
    if deadline is not None and started is not None and (now - started).total_seconds() >= deadline:
        message = f"the aggregator ran for {deadline}s (spec.activeDeadlineSeconds) before the job completed"
        _fail(draft, Reason.DEADLINE_EXCEEDED, message, stop=pod is not None and not terminating)
        _ended_pod(draft, pod)
        return draft.plan()

    _drive_pod(draft, observed, spec, config, config_text, terminating)
    return draft.plan()


def refused(job: JobRef, failure: ChildFailure, now: dt.datetime) -> Plan:
    """The status and Events for a child the API server refused, once k8s.py has stopped applying the plan.

    Failed (and Stalled, for kstatus) when the same request can never succeed; Stalled, with Ready and
    Reconciling False, while a retry may (the handler retries). Either way the condition carries the API's
    message, and a Warning Event says it: when the condition turns True, and again when a different refusal
    replaces the one already reported. Nothing changes for a job that has already ended."""
    old = job.status()
    draft = _Draft(job, old, now)
    if old.terminal:
        return draft.plan()
    reason, message = failure.reason, failure.describe()
    if failure.permanent:
        _fail(draft, reason, message, stop=False)
        draft.cond(ConditionType.STALLED, True, reason, message)
        return draft.plan()
    before = old.condition(ConditionType.STALLED)
    if before is not None and before.status == "True" and (before.reason, before.message) != (reason, message):
        draft.event("Warning", reason, message)  # still stalled, for another cause: the edge Event will not come
    draft.cond(ConditionType.STALLED, True, reason, message)
    draft.cond(ConditionType.READY, False, reason, message)
    draft.cond(ConditionType.RECONCILING, False, reason, message)
    _init_terminal(draft)
    draft.fields["phase"] = draft.fields["phase"] or Phase.PENDING.value
    return draft.plan()


def _never_runs(draft: _Draft, reason: str, message: str, pod: JSON | None, stop: bool) -> Plan:
    if not draft.old.terminal:
        _fail(draft, reason, message, stop=stop)
        draft.cond(ConditionType.STALLED, True, reason, message)
    _ended_pod(draft, pod)
    return draft.plan()


# ---------------------------------------------------------------------------------------------- children


def _ensure_children(
    draft: _Draft,
    observed: Observed,
    spec: FederatedJobSpec,
    config: OperatorConfig,
    config_text: str,
    creds: JobCredentials | None,
) -> None:
    body = draft.job.body
    configmap = build_configmap(body, config_text)
    wanted: list[JSON] = [build_service_account(body), build_role(body), build_rolebinding(body)]
    if "Secret" not in observed.present:
        if creds is None:
            raise ValueError(f"job {draft.job.namespace}/{draft.job.name}: its Secret is missing; pass credentials")
        wanted.append(build_secret(body, creds))
    wanted.append(configmap)
    if config.gateway is not None and not observed.gateway_secret:
        draft.create.append(build_gateway_secret(body, config.gateway))
    if config.state_storage == "pvc":
        wanted.append(build_state_claim(body, config))
    wanted.append(build_service(body, spec))
    draft.create.extend(obj for obj in wanted if obj["kind"] not in observed.present)
    if "ConfigMap" in observed.present and observed.configmap_data != configmap["data"]:
        draft.update.append(configmap)  # e.g. spec.aggregator.port changed; the pod is replaced below
    if draft.create:
        kinds = ", ".join(obj["kind"] for obj in draft.create)
        draft.event("Normal", "Created", f"created {kinds}")


# ------------------------------------------------------------------------------------------ transitions


def _suspend(draft: _Draft, stop: bool) -> None:
    draft.delete_pod = stop
    message = "spec.suspend is true: the aggregator is stopped; it resumes from its checkpoint when unsuspended"
    draft.cond(ConditionType.RUNNING, False, Reason.SUSPENDED, message)
    draft.cond(ConditionType.READY, False, Reason.SUSPENDED, message)
    draft.cond(ConditionType.RECONCILING, False, Reason.SUSPENDED, message)
    draft.cond(ConditionType.STALLED, False, Reason.AS_EXPECTED)
    _init_terminal(draft)
    # As for a Kubernetes Job, the deadline clock restarts when the job is resumed.
    draft.fields.update(phase=Phase.SUSPENDED.value, startTime=None, endpoint=None, aggregatorPod=None)


def _finished(old: FederatedJobStatus, spec: FederatedJobSpec, pod: JSON | None) -> bool:
    if old.outcome is not None:
        return True
    if old.round is not None and old.round >= spec.rounds:
        return True
    return pod is not None and pod.get("status", {}).get("phase") == "Succeeded"


def _complete(draft: _Draft, old: FederatedJobStatus, spec: FederatedJobSpec) -> None:
    reason = old.outcome.reason if old.outcome is not None else Reason.ROUNDS_COMPLETED.value
    rounds = old.round if old.round is not None else spec.rounds
    accuracy = f"accuracy {old.accuracy:.4f}" if old.accuracy is not None else ""
    said = old.outcome.message if old.outcome is not None and old.outcome.message else f"{rounds}/{spec.rounds} rounds"
    message = ", ".join(part for part in (said, accuracy) if part)
    draft.cond(ConditionType.COMPLETE, True, reason, message)
    draft.cond(ConditionType.FAILED, False, Reason.JOB_ENDED, "the job completed")
    draft.cond(ConditionType.RUNNING, False, Reason.JOB_ENDED, "the job completed")
    draft.cond(ConditionType.READY, True, reason, message)
    draft.cond(ConditionType.RECONCILING, False, Reason.JOB_ENDED)
    draft.cond(ConditionType.STALLED, False, Reason.AS_EXPECTED)
    draft.end(Phase.COMPLETE)


def _model_published(draft: _Draft, old: FederatedJobStatus) -> None:
    """`ModelPublished` of a complete job, once its aggregator has said how publishing went: True with the
    digest when `status.model` is there, False with the aggregator's reason when the outcome came without it.
    No condition before the outcome, nor for a job whose aggregator had no gateway to publish to."""
    if old.model is not None:
        model = old.model
        message = f"{model.digest} (round {model.round}, {model.size} bytes) is on the fleet gateway"
        published, reason, severity = True, Reason.MODEL_PUBLISHED, "Normal"
    elif old.outcome is not None and NOT_PUBLISHED_MARK in old.outcome.message:
        message = old.outcome.message[old.outcome.message.index(NOT_PUBLISHED_MARK) :]
        published, reason, severity = False, Reason.MODEL_NOT_PUBLISHED, "Warning"
    else:
        return
    before = old.condition(ConditionType.MODEL_PUBLISHED)
    draft.cond(ConditionType.MODEL_PUBLISHED, published, reason, message)
    if before is None or before.reason != reason:
        draft.event(severity, reason, message)


def _fail(draft: _Draft, reason: str, message: str, stop: bool) -> None:
    draft.delete_pod = stop
    draft.cond(ConditionType.FAILED, True, reason, message)
    draft.cond(ConditionType.COMPLETE, False, Reason.JOB_ENDED, "the job failed")
    draft.cond(ConditionType.RUNNING, False, reason, message)
    draft.cond(ConditionType.READY, False, reason, message)
    draft.cond(ConditionType.RECONCILING, False, Reason.JOB_ENDED)
    draft.cond(ConditionType.STALLED, False, Reason.AS_EXPECTED)
    draft.fields["endpoint"] = None
    draft.end(Phase.FAILED)


def _ended_pod(draft: _Draft, pod: JSON | None) -> None:
    """What the status says of the aggregator once the job has ended. No endpoint: nothing serves devices any
    more. The pod as it is now while it exists (Running while it lingers or shuts down, then Succeeded or
    Failed); once it is gone, the record of it only if it had finished, so no stale `Running` stays behind."""
    draft.fields["endpoint"] = None
    if pod is not None:
        draft.fields["aggregatorPod"] = _pod_summary(pod)
    elif draft.old.aggregator_pod is not None and draft.old.aggregator_pod.phase not in _FINISHED_POD_PHASES:
        draft.fields["aggregatorPod"] = None


def _invalid(draft: _Draft, message: str, stop: bool) -> None:
    """Failed for input that can never work: Stalled too, which is how kstatus (Flux) reads a failure."""
    _fail(draft, Reason.INVALID_SPEC, message, stop)
    draft.cond(ConditionType.STALLED, True, Reason.INVALID_SPEC, message)


def _init_terminal(draft: _Draft) -> None:
    """Complete and Failed are listed from the start (False), so clients can wait on them."""
    for kind in (ConditionType.COMPLETE, ConditionType.FAILED):
        draft.cond(kind, False, Reason.AS_EXPECTED, "the job has not ended")


# ------------------------------------------------------------------------------------------- the pod


def _drive_pod(
    draft: _Draft,
    observed: Observed,
    spec: FederatedJobSpec,
    config: OperatorConfig,
    config_text: str,
    terminating: bool,
) -> None:
    _init_terminal(draft)
    body, pod = draft.job.body, observed.pod
    desired = build_aggregator_pod(body, spec, config, config_text)
    pending = draft.old.phase in (None, Phase.PENDING)
    if pod is None:
        draft.create.append(desired)
        previous = draft.old.aggregator_pod
        if previous is not None:
            draft.event(
                "Normal",
                Reason.AGGREGATOR_RECREATED,
                f"aggregator pod {previous.name} is gone; a new one resumes from the checkpoint",
            )
        _starting(draft, Reason.CREATING_AGGREGATOR, "creating the aggregator pod")
        draft.fields["phase"] = Phase.PENDING.value if pending else Phase.RUNNING.value
        draft.fields["endpoint"] = None
        return
    draft.fields["aggregatorPod"] = _pod_summary(pod)
    if terminating:
        _starting(draft, Reason.WAITING_FOR_AGGREGATOR, "waiting for the old aggregator pod to terminate")
        draft.fields["endpoint"] = None
        return
    wanted_hash = desired["metadata"]["annotations"][naming.ANNOTATION_POD_HASH]
    if pod["metadata"].get("annotations", {}).get(naming.ANNOTATION_POD_HASH) != wanted_hash:
        draft.delete_pod = True
        draft.event("Normal", Reason.UPDATING_AGGREGATOR, "the aggregator's spec changed: replacing its pod")
        _starting(draft, Reason.UPDATING_AGGREGATOR, "replacing the aggregator pod with the new spec")
        draft.fields["endpoint"] = None
        return
    status = pod.get("status", {})
    refused = _refused_input(status)
    if refused is not None:
        # Exit 2: the aggregator found input that no restart fixes (api/termination.py); its pod would
        # otherwise restart until the job's deadline.
        _invalid(draft, f"the aggregator refused its input: {refused}", stop=True)
        return
    phase = status.get("phase", "Pending")
    if phase == "Failed":
        draft.delete_pod = True
        message = f"aggregator pod failed: {status.get('message') or status.get('reason') or 'see its logs'}"
        draft.event("Warning", "AggregatorFailed", message + "; recreating it")
        _starting(draft, Reason.CREATING_AGGREGATOR, message)
        return
    running = phase == "Running"
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    stuck = _stuck(status, config.stalled_restarts)
    if running and draft.old.start_time is None:
        draft.fields["startTime"] = rfc3339(draft.now)
    draft.fields["endpoint"] = _endpoint(body, spec, config, status) if running else None
    draft.fields["phase"] = Phase.RUNNING.value if running or not pending else Phase.PENDING.value
    if stuck is not None:
        reason, message = stuck
        draft.cond(ConditionType.STALLED, True, reason, message)
        draft.cond(ConditionType.READY, False, reason, message)
        draft.cond(ConditionType.RECONCILING, False, reason, message)
        draft.cond(ConditionType.RUNNING, False, reason, message)
        return
    draft.cond(ConditionType.STALLED, False, Reason.AS_EXPECTED)
    if running and ready:
        draft.cond(ConditionType.RUNNING, True, Reason.AGGREGATOR_RUNNING, "the aggregator serves devices")
        draft.cond(ConditionType.READY, True, Reason.AGGREGATOR_READY, f"devices connect to {draft.fields['endpoint']}")
        draft.cond(ConditionType.RECONCILING, False, Reason.AGGREGATOR_READY)
    elif running:
        draft.cond(ConditionType.RUNNING, True, Reason.AGGREGATOR_RUNNING, "the aggregator process runs")
        draft.cond(ConditionType.READY, False, Reason.AGGREGATOR_NOT_READY, "the aggregator is not serving yet")
        draft.cond(ConditionType.RECONCILING, True, Reason.AGGREGATOR_STARTING, "waiting for the aggregator to serve")
    else:
        _starting(draft, Reason.AGGREGATOR_STARTING, "the aggregator pod is starting")


def _starting(draft: _Draft, reason: str, message: str) -> None:
    draft.cond(ConditionType.RECONCILING, True, reason, message)
    draft.cond(ConditionType.READY, False, reason, message)
    draft.cond(ConditionType.RUNNING, False, reason, message)
    draft.cond(ConditionType.STALLED, False, Reason.AS_EXPECTED)


def _refused_input(status: JSON) -> str | None:
    """The aggregator container's message when it exited with bad input; None otherwise."""
    for container in status.get("containerStatuses") or []:
        if isinstance(container, dict) and container.get("name") == AGGREGATOR_CONTAINER:
            return refused_input(container)
    return None


def _stuck(status: JSON, max_restarts: int) -> tuple[str, str] | None:
    """(reason, message) when a container cannot start or keeps crashing; None while it may still come up."""
    for container in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in STUCK_REASONS:
            return reason, f"container {container['name']}: {waiting.get('message') or reason}"
        if container.get("restartCount", 0) >= max_restarts and not container.get("ready", False):
            last = (container.get("lastState") or {}).get("terminated") or {}
            detail = f"exit code {last['exitCode']}" if "exitCode" in last else "see its logs"
            return (
                Reason.CRASH_LOOP.value,
                f"container {container['name']} restarted {container['restartCount']} times ({detail})",
            )
    return None


def _endpoint(body: JSON, spec: FederatedJobSpec, config: OperatorConfig, pod_status: JSON) -> str | None:
    if config.endpoint_mode == "service":
        meta = body["metadata"]
        return f"{naming.aggregator_name(meta['name'])}.{meta['namespace']}.svc:{spec.aggregator.port}"
    ip = pod_status.get("podIP")
    return f"{ip}:{spec.aggregator.port}" if ip else None


def _pod_summary(pod: JSON) -> JSON:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return {
        "name": pod["metadata"]["name"],
        "uid": pod["metadata"].get("uid", ""),
        "phase": pod.get("status", {}).get("phase", "Pending"),
        "restarts": sum(int(c.get("restartCount", 0)) for c in statuses),
    }


# ----------------------------------------------------------------------------------------------- events


_ON_TRUE = {
    ConditionType.RUNNING: "Normal",
    ConditionType.COMPLETE: "Normal",
    ConditionType.STALLED: "Warning",
    ConditionType.FAILED: "Warning",
}


def _transition_events(old: list[Condition], new: list[Condition]) -> list[EventSpec]:
    """An Event each time Running, Complete, Stalled or Failed becomes True (edge-triggered, so a
    reconcile that changes nothing posts nothing)."""
    events = []
    for kind, severity in _ON_TRUE.items():
        if is_true(new, kind) and not is_true(old, kind):
            condition = next(c for c in new if c.type == kind)
            reason = "Completed" if kind == ConditionType.COMPLETE else condition.reason
            events.append(EventSpec(severity, reason, condition.message or kind.value))
    return events


def _phase_events(old: str | None, new: str | None) -> list[EventSpec]:
    if new == Phase.SUSPENDED and old != Phase.SUSPENDED:
        return [EventSpec("Normal", Reason.SUSPENDED, "aggregator stopped (spec.suspend); its checkpoint is kept")]
    if old == Phase.SUSPENDED and new != Phase.SUSPENDED:
        message = "spec.suspend is false: the aggregator resumes from its checkpoint"
        return [EventSpec("Normal", Reason.RESUMED, message)]
    return []


def _changed(current: JSON, wanted: JSON) -> JSON:
    """The merge patch turning `current` into `wanted` for the keys of `wanted` (None deletes a key)."""
    patch: JSON = {}
    for key, value in wanted.items():
        if value is None:
            if current.get(key) is not None:
                patch[key] = None
        elif current.get(key) != value:
            patch[key] = value
    return patch

"""The reconcile step as a pure function: a job's life from creation to its end, and the rules on the way."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from operator_jobs import SPEC, job_body

from fedfleet.api.status import ConditionType, FederatedJobStatus
from fedfleet.operator import naming
from fedfleet.operator.config import GatewayLink, OperatorConfig
from fedfleet.operator.job import JobRef
from fedfleet.operator.reconcile import ChildFailure, Observed, Plan, reconcile, refused, set_condition
from fedfleet.operator.resources import JobCredentials

CONFIG = OperatorConfig()
T0 = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
ALL_STATIC = frozenset(
    {"ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap", "PersistentVolumeClaim", "Service"}
)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class World:
    """A job and its children as the API server would hold them, with plans applied the way k8s.py does."""

    def __init__(self, credentials: JobCredentials, spec: dict[str, Any] | None = None, name: str = "digits") -> None:
        self.body = job_body(spec, name=name)
        self.credentials = credentials
        self.present: set[str] = set()
        self.configmap: dict[str, str] | None = None
        self.pod: dict[str, Any] | None = None
        self.events: list[tuple[str, str]] = []
        self.deleted_pods = 0
        self.refusing: dict[str, tuple[int, str]] = {}

    @property
    def status(self) -> FederatedJobStatus:
        return JobRef.from_body(self.body).status()

    def cond(self, kind: ConditionType) -> tuple[str, str]:
        found = self.status.condition(kind)
        assert found is not None, kind
        return found.status, found.reason

    def step(self, now: dt.datetime, config: OperatorConfig = CONFIG) -> Plan:
        observed = Observed(pod=self.pod, present=frozenset(self.present), configmap_data=self.configmap)
        creds = self.credentials if "Secret" not in self.present else None
        plan = reconcile(JobRef.from_body(self.body), observed, config, now, creds)
        failure = self._create_children(plan, now)
        if failure is not None:
            # As k8s.py and the handler do: applying stops at the refused child, and the job says why.
            plan = refused(JobRef.from_body(self.body), failure, now)
        else:
            self._apply_the_rest(plan)
        status = {**(self.body.get("status") or {}), **plan.status}
        self.body["status"] = {k: v for k, v in status.items() if v is not None}
        self.events += [(e.type, e.reason) for e in plan.events]
        return plan

    def refuse(self, kind: str, status: int, message: str) -> None:
        """From now on the API server refuses to create children of `kind`, answering `status` and `message`."""
        self.refusing[kind] = (status, message)

    def _create_children(self, plan: Plan, now: dt.datetime) -> ChildFailure | None:
        for obj in plan.create:
            if obj["kind"] in self.refusing:
                status, message = self.refusing[obj["kind"]]
                return ChildFailure("create", obj["kind"], obj["metadata"]["name"], status, message)
            if obj["kind"] == "Pod":
                assert self.pod is None, "a second aggregator pod"
                self.pod = copy.deepcopy(obj)
                self.pod["metadata"]["uid"] = f"pod-{len(self.events)}-{now.timestamp()}"
                self.pod["status"] = {"phase": "Pending"}
            else:
                assert obj["kind"] not in self.present, f"{obj['kind']} created twice"
                self.present.add(obj["kind"])
                if obj["kind"] == "ConfigMap":
                    self.configmap = obj["data"]
        return None

    def _apply_the_rest(self, plan: Plan) -> None:
        for obj in plan.update:
            self.configmap = obj["data"]
        if plan.delete_pod:
            assert self.pod is not None
            self.pod, self.deleted_pods = None, self.deleted_pods + 1

    def pod_runs(self, ready: bool = True, ip: str = "127.0.10.7") -> None:
        assert self.pod is not None
        self.pod["status"] = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "aggregator", "ready": ready, "restartCount": 0, "state": {"running": {}}}],
        }

    def aggregator_reports(self, **fields: Any) -> None:
        self.body["status"] = {**self.body.get("status", {}), **fields}

    def edit_spec(self, **changes: Any) -> None:
        self.body["spec"] = {**self.body["spec"], **changes}
        self.body["metadata"]["generation"] += 1


def running_world(credentials: JobCredentials, spec: dict[str, Any] | None = None) -> World:
    world = World(credentials, spec)
    world.step(at(0))
    world.pod_runs()
    world.step(at(1))
    return world


# --- creation -----------------------------------------------------------------------------------------


def test_a_new_job_gets_all_its_children_and_a_pending_status(credentials: JobCredentials) -> None:
    world = World(credentials)
    plan = world.step(at(0))
    kinds = [o["kind"] for o in plan.create]
    assert kinds == [
        "ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap", "PersistentVolumeClaim", "Service", "Pod",
    ]  # fmt: skip
    assert kinds.index("Pod") == len(kinds) - 1  # the pod last: its volumes exist when it starts
    status = world.status
    assert status.observed_generation == 1 and status.phase == "Pending"
    assert world.cond(ConditionType.RECONCILING) == ("True", "CreatingAggregator")
    assert world.cond(ConditionType.READY)[0] == "False"
    assert world.cond(ConditionType.COMPLETE) == ("False", "AsExpected")
    assert world.cond(ConditionType.FAILED) == ("False", "AsExpected")
    assert [c.type for c in status.conditions] == ["Ready", "Reconciling", "Stalled", "Running", "Complete", "Failed"]
    assert all(
        c.last_transition_time == "2030-01-02T03:04:05Z" and c.observed_generation == 1 for c in status.conditions
    )
    assert ("Normal", "Created") in world.events


def test_credentials_are_needed_only_while_the_secret_is_missing(credentials: JobCredentials) -> None:
    with pytest.raises(ValueError, match="Secret is missing"):
        reconcile(JobRef.from_body(job_body()), Observed(), CONFIG, at(0), None)
    plan = reconcile(JobRef.from_body(job_body()), Observed(present=ALL_STATIC), CONFIG, at(0), None)
    assert [o["kind"] for o in plan.create] == ["Pod"]


def test_ready_aggregator_makes_the_job_running_with_an_endpoint(credentials: JobCredentials) -> None:
    world = World(credentials)
    world.step(at(0))
    world.pod_runs(ready=False)
    world.step(at(1))
    assert world.cond(ConditionType.RUNNING) == ("True", "AggregatorRunning")
    assert world.cond(ConditionType.READY) == ("False", "AggregatorNotReady")
    assert world.cond(ConditionType.RECONCILING) == ("True", "AggregatorStarting")
    world.pod_runs(ready=True)
    world.step(at(2))
    status = world.status
    assert status.phase == "Running" and status.endpoint == "127.0.10.7:50051"
    assert status.start_time == "2030-01-02T03:04:06Z"  # when the process first ran: the deadline clock
    assert world.cond(ConditionType.READY) == ("True", "AggregatorReady")
    assert world.cond(ConditionType.RECONCILING)[0] == "False"
    assert status.aggregator_pod is not None and status.aggregator_pod.name == "digits-aggregator"
    assert ("Normal", "AggregatorRunning") in world.events


def test_reconciling_a_settled_job_changes_nothing(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    before = copy.deepcopy(world.body["status"])
    plan = world.step(at(60))
    assert plan.idle, plan  # no API writes at all: the timer may run every few seconds
    assert world.body["status"] == before


def test_service_endpoint_mode(credentials: JobCredentials) -> None:
    world = World(credentials)
    world.step(at(0))
    world.pod_runs()
    world.step(at(1), OperatorConfig(endpoint_mode="service"))
    assert world.status.endpoint == "digits-aggregator.team-a.svc:50051"


def test_last_transition_time_moves_only_when_a_status_flips(credentials: JobCredentials) -> None:
    conditions = set_condition([], ConditionType.READY, False, "A", "", at(0), 1)
    same = set_condition(conditions, ConditionType.READY, False, "B", "other reason", at(10), 2)
    assert same[0].last_transition_time == conditions[0].last_transition_time
    assert (same[0].reason, same[0].observed_generation) == ("B", 2)
    flipped = set_condition(same, ConditionType.READY, True, "C", "", at(20), 2)
    assert flipped[0].last_transition_time == "2030-01-02T03:04:25Z"


# --- the end ------------------------------------------------------------------------------------------


def test_all_rounds_reported_completes_the_job(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    world.aggregator_reports(round=3, accuracy=0.91, participants=3)
    plan = world.step(at(30))
    assert world.cond(ConditionType.COMPLETE) == ("True", "RoundsCompleted")
    assert world.cond(ConditionType.READY) == ("True", "RoundsCompleted")
    assert world.cond(ConditionType.RUNNING)[0] == "False"
    assert world.status.phase == "Complete" and world.status.completion_time == "2030-01-02T03:04:35Z"
    complete = world.status.condition(ConditionType.COMPLETE)
    assert complete is not None and "3/3 rounds, accuracy 0.9100" in complete.message
    assert ("Normal", "Completed") in world.events
    assert not plan.delete_pod  # the aggregator finishes on its own (linger, then exit 0)


def test_an_early_outcome_completes_with_its_reason(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    world.aggregator_reports(round=1, outcome={"reason": "PrivacyBudgetExhausted", "message": "ε 3.0 spent"})
    world.step(at(30))
    assert world.cond(ConditionType.COMPLETE) == ("True", "PrivacyBudgetExhausted")


def test_a_succeeded_pod_completes_the_job(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    assert world.pod is not None
    world.pod["status"]["phase"] = "Succeeded"
    world.step(at(30))
    assert world.cond(ConditionType.COMPLETE)[0] == "True"


def test_terminal_conditions_never_flip_back(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    world.aggregator_reports(round=3)
    world.step(at(30))
    done = copy.deepcopy(world.body["status"]["conditions"])
    world.pod = None  # the finished aggregator pod is removed by someone
    world.edit_spec(suspend=True)
    plan = world.step(at(40))
    assert not plan.create and not plan.delete_pod  # nothing is started again after the end
    assert world.body["status"]["conditions"] == done
    assert world.status.observed_generation == 2
    # The helper refuses too: a True terminal condition stays as it is.
    conditions = world.status.conditions
    again = set_condition(conditions, ConditionType.COMPLETE, False, "Whatever", "", at(50), 3)
    assert again == list(conditions)


def test_active_deadline_fails_the_job_and_stops_the_aggregator(credentials: JobCredentials) -> None:
    world = running_world(credentials, {**SPEC, "activeDeadlineSeconds": 100})
    assert not world.step(at(100)).delete_pod  # 99 s since it started running
    plan = world.step(at(101))
    assert plan.delete_pod
    assert world.cond(ConditionType.FAILED) == ("True", "DeadlineExceeded")
    assert world.cond(ConditionType.COMPLETE)[0] == "False"
    assert world.status.phase == "Failed" and world.status.endpoint is None
    assert ("Warning", "DeadlineExceeded") in world.events
    assert not world.step(at(200)).create  # a failed job is not restarted


def test_a_spec_the_models_refuse_fails_permanently(credentials: JobCredentials) -> None:
    # Schema-valid, but a rule only the models know (and the CRD would have caught it, had it been applied
    # before the CEL rule existed): the operator says so instead of crash-looping an aggregator.
    world = World(credentials, {**SPEC, "cohort": {"clientsPerRound": 9}})
    plan = world.step(at(0))
    assert not plan.create
    assert world.cond(ConditionType.FAILED) == ("True", "InvalidSpec")
    assert world.cond(ConditionType.STALLED) == ("True", "InvalidSpec")
    failed = world.status.condition(ConditionType.FAILED)
    assert failed is not None and "spec.cohort.clientsPerRound" in failed.message


# --- disruptions -------------------------------------------------------------------------------------


def test_a_deleted_aggregator_pod_is_recreated_once(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    world.aggregator_reports(round=1)
    world.pod = None
    plan = world.step(at(10))
    assert [o["kind"] for o in plan.create] == ["Pod"]
    assert ("Normal", "AggregatorRecreated") in world.events
    assert world.cond(ConditionType.READY)[0] == "False"
    assert world.status.phase == "Running" and world.status.endpoint is None
    assert not world.step(at(11)).create  # the pod exists (Pending): no second one


def test_a_terminating_pod_is_waited_for(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    assert world.pod is not None
    world.pod["metadata"]["deletionTimestamp"] = "2030-01-02T03:05:00Z"
    plan = world.step(at(10))
    assert not plan.create and not plan.delete_pod
    assert world.cond(ConditionType.RECONCILING) == ("True", "WaitingForAggregator")


def test_an_aggregator_spec_change_replaces_the_pod(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    world.edit_spec(aggregator={"port": 6000, "httpPort": 6001})
    plan = world.step(at(10))
    assert [o["kind"] for o in plan.update] == ["ConfigMap"] and plan.delete_pod
    assert ("Normal", "UpdatingAggregator") in world.events
    world.step(at(11))
    assert world.pod is not None
    assert [p["containerPort"] for p in world.pod["spec"]["containers"][0]["ports"]] == [6000, 6001]
    assert world.status.observed_generation == 2


def test_a_crash_looping_aggregator_stalls_the_job(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    assert world.pod is not None
    world.pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    world.pod["status"]["containerStatuses"] = [
        {
            "name": "aggregator",
            "ready": False,
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1}},
        }
    ]
    world.step(at(10))
    status, reason = world.cond(ConditionType.STALLED)
    assert (status, reason) == ("True", "CrashLoopBackOff")
    stalled = world.status.condition(ConditionType.STALLED)
    assert stalled is not None and "exit code 1" in stalled.message
    assert world.cond(ConditionType.READY)[0] == "False"
    assert ("Warning", "CrashLoopBackOff") in world.events


REFUSAL = "privacy.differentialPrivacy.targetEpsilon: cannot be reached: no noise multiplier up to 10000 reaches it"


def _aggregator_exited(world: World, code: int, message: str | None, restarted: bool) -> None:
    """The aggregator container exited with `code`; `restarted`: the kubelet has already started it again."""
    assert world.pod is not None
    terminated: dict[str, Any] = {"exitCode": code, "reason": "Error"}
    if message is not None:
        terminated["message"] = message
    if restarted:
        state, last = {"running": {"startedAt": "2030-01-02T03:04:20Z"}}, {"terminated": terminated}
    else:
        state, last = {"terminated": terminated}, {}
    world.pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    world.pod["status"]["containerStatuses"] = [
        {"name": "aggregator", "ready": False, "restartCount": int(restarted), "state": state, "lastState": last}
    ]


@pytest.mark.parametrize("restarted", [False, True], ids=["just-exited", "already-restarted"])
def test_bad_input_found_by_the_aggregator_fails_the_job_with_its_message(
    credentials: JobCredentials, restarted: bool
) -> None:
    world = World(credentials)
    world.step(at(0))
    world.pod_runs(ready=False)
    _aggregator_exited(world, 2, REFUSAL, restarted)
    plan = world.step(at(5))
    assert plan.delete_pod and not plan.create  # no restart loop until activeDeadlineSeconds
    assert world.status.phase == "Failed" and world.status.endpoint is None
    for kind in (ConditionType.FAILED, ConditionType.STALLED):
        condition = world.status.condition(kind)
        assert condition is not None and (condition.status, condition.reason) == ("True", "InvalidSpec")
        assert condition.message == f"the aggregator refused its input: {REFUSAL}"
    assert world.cond(ConditionType.COMPLETE)[0] == "False"
    assert world.cond(ConditionType.READY)[0] == "False"
    warnings = [e for e in plan.events if e.type == "Warning"]
    assert [(e.reason, e.message) for e in warnings] == [
        ("InvalidSpec", f"the aggregator refused its input: {REFUSAL}")
    ]
    # Terminal: nothing is created again. The deleted pod's record goes (it was Running when it went: no stale
    # Running stays behind), and from then on the job rests.
    assert world.pod is None
    later = world.step(at(60))
    assert not later.create and not later.update and not later.delete_pod and not later.events
    assert world.status.aggregator_pod is None
    assert world.step(at(120)).idle


def test_bad_input_without_a_message_still_fails_the_job(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    _aggregator_exited(world, 2, None, restarted=True)
    world.step(at(10))
    failed = world.status.condition(ConditionType.FAILED)
    assert failed is not None and failed.reason == "InvalidSpec" and "its log says why" in failed.message


@pytest.mark.parametrize("code", [1, 3, 137])
def test_other_exits_restart_in_place_and_keep_the_job(credentials: JobCredentials, code: int) -> None:
    world = running_world(credentials)
    _aggregator_exited(world, code, "Traceback (most recent call last): ...", restarted=True)
    plan = world.step(at(10))
    assert not plan.delete_pod and world.status.phase == "Running"
    assert world.cond(ConditionType.FAILED) == ("False", "AsExpected")


def test_exit_2_of_an_outdated_pod_does_not_fail_the_new_spec(credentials: JobCredentials) -> None:
    # The spec changed (a new port) while the old pod was refusing the old spec: the pod is replaced first.
    world = running_world(credentials)
    _aggregator_exited(world, 2, REFUSAL, restarted=True)
    world.edit_spec(aggregator={"port": 6000, "httpPort": 6001})
    plan = world.step(at(10))
    assert plan.delete_pod and world.status.phase == "Running"
    assert world.cond(ConditionType.FAILED)[0] == "False"


def test_a_missing_secret_mount_stalls_the_job(credentials: JobCredentials) -> None:
    world = World(credentials)
    world.step(at(0))
    assert world.pod is not None
    world.pod["status"] = {
        "phase": "Pending",
        "initContainerStatuses": [
            {"name": "prepare", "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError"}}}
        ],
    }
    world.step(at(1))
    assert world.cond(ConditionType.STALLED) == ("True", "CreateContainerConfigError")


def test_suspend_stops_the_aggregator_and_resume_restarts_it(credentials: JobCredentials) -> None:
    world = running_world(credentials, {**SPEC, "activeDeadlineSeconds": 100})
    world.aggregator_reports(round=1)
    world.edit_spec(suspend=True)
    plan = world.step(at(50))
    assert plan.delete_pod and world.deleted_pods == 1
    assert world.status.phase == "Suspended" and world.status.start_time is None and world.status.endpoint is None
    assert world.cond(ConditionType.RUNNING) == ("False", "Suspended")
    assert world.cond(ConditionType.READY) == ("False", "Suspended")
    assert ("Normal", "Suspended") in world.events
    assert not world.step(at(500)).create  # suspended time does not count against the deadline...
    assert world.cond(ConditionType.FAILED)[0] == "False"
    world.edit_spec(suspend=False)
    plan = world.step(at(600))
    assert [o["kind"] for o in plan.create] == ["Pod"]
    assert ("Normal", "Resumed") in world.events
    assert ("Normal", "AggregatorRecreated") not in world.events  # a resume is not a lost pod
    world.pod_runs()
    world.step(at(601))
    resumed = world.status
    assert resumed.start_time == "2030-01-02T03:14:06Z"  # ...the clock restarted on resume
    assert world.cond(ConditionType.RUNNING)[0] == "True"
    assert world.body["status"]["round"] == 1  # the aggregator's progress is never touched by the operator


def test_observed_generation_follows_the_spec(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    world.edit_spec(activeDeadlineSeconds=1000)
    world.step(at(5))
    assert world.status.observed_generation == 2
    assert {c.observed_generation for c in world.status.conditions} == {2}


def test_children_deleted_by_hand_are_recreated(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    world.present.discard("Service")
    world.present.discard("Role")
    plan = world.step(at(5))
    assert [o["kind"] for o in plan.create] == ["Role", "Service"]
    assert all(o["metadata"]["name"] == naming.aggregator_name("digits") for o in plan.create)


# --- the fleet gateway --------------------------------------------------------------------------------


def test_with_a_gateway_the_job_gets_its_copy_of_the_credentials_once(gateway_link: GatewayLink) -> None:
    config = OperatorConfig(gateway=gateway_link)
    job = JobRef.from_body(job_body())
    plan = reconcile(job, Observed(present=ALL_STATIC), config, at(0), None)
    secrets = [o for o in plan.create if o["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == ["digits-gateway-publish"]
    assert [o["kind"] for o in plan.create][-1] == "Pod"  # after the Secret it mounts
    text = next(o for o in plan.update if o["kind"] == "ConfigMap")["data"]["aggregator.yaml"]
    assert "address: fedfleet-gateway.fedfleet-system.svc:7443" in text
    again = reconcile(job, Observed(present=ALL_STATIC, gateway_secret=True), config, at(1), None)
    assert "Secret" not in [o["kind"] for o in again.create]
    # Without a gateway, no copy is made and the aggregator is told of none.
    plain = reconcile(job, Observed(present=ALL_STATIC), CONFIG, at(0), None)
    assert [o["kind"] for o in plain.create] == ["Pod"]


def _complete_with(credentials: JobCredentials, **reported: Any) -> World:
    world = running_world(credentials)
    world.aggregator_reports(round=3, accuracy=0.9)
    world.step(at(30))  # complete on the round count, before the aggregator's last word
    world.aggregator_reports(**reported)
    return world


def test_a_published_model_shows_as_a_condition_and_an_event(credentials: JobCredentials) -> None:
    model = {"digest": "sha256:" + "b" * 64, "size": 6000, "round": 3, "accuracy": 0.9, "architecture": "logistic",
             "publishedAt": "2030-01-02T03:05:00Z"}  # fmt: skip
    world = _complete_with(credentials, outcome={"reason": "RoundsCompleted", "message": "3 rounds"}, model=model)
    world.step(at(31))
    assert world.cond(ConditionType.MODEL_PUBLISHED) == ("True", "ModelPublished")
    found = world.status.condition(ConditionType.MODEL_PUBLISHED)
    assert found is not None and model["digest"] in found.message
    assert world.events.count(("Normal", "ModelPublished")) == 1
    assert world.step(at(40)).idle  # said once
    assert world.cond(ConditionType.COMPLETE) == ("True", "RoundsCompleted")


def test_a_model_that_could_not_be_published_says_why(credentials: JobCredentials) -> None:
    said = "3 rounds; the model is not published: publishing to the fleet gateway at gw:7443: UNAVAILABLE"
    world = _complete_with(credentials, outcome={"reason": "RoundsCompleted", "message": said})
    world.step(at(31))
    assert world.cond(ConditionType.MODEL_PUBLISHED) == ("False", "ModelNotPublished")
    found = world.status.condition(ConditionType.MODEL_PUBLISHED)
    assert found is not None and found.message.startswith("the model is not published: publishing to")
    assert ("Warning", "ModelNotPublished") in world.events
    assert world.cond(ConditionType.COMPLETE)[0] == "True"  # the job is complete all the same


def test_no_model_condition_without_a_gateway_or_before_the_outcome(credentials: JobCredentials) -> None:
    world = _complete_with(credentials)
    world.step(at(31))
    assert world.status.condition(ConditionType.MODEL_PUBLISHED) is None
    world.aggregator_reports(outcome={"reason": "RoundsCompleted", "message": "3 rounds finished"})
    world.step(at(32))
    assert world.status.condition(ConditionType.MODEL_PUBLISHED) is None


# --- children the API server refuses ------------------------------------------------------------------

_INVALID_SERVICE = (
    'Service "digits-aggregator" is invalid: metadata.name: Invalid value: "digits-aggregator": '
    "admission policy service-names denied the request"
)
_PODSECURITY = (
    'pods "digits-aggregator" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation '
    '!= false (containers "prepare", "aggregator" must set securityContext.allowPrivilegeEscalation=false)'
)


def _message(world: World, kind: ConditionType) -> str:
    found = world.status.condition(kind)
    assert found is not None, kind
    return found.message


def test_a_child_refused_as_invalid_fails_the_job_with_the_api_message(credentials: JobCredentials) -> None:
    world = World(credentials)
    world.refuse("Service", 422, _INVALID_SERVICE)
    world.step(at(0))
    assert world.cond(ConditionType.FAILED) == ("True", "ChildInvalid")
    assert world.cond(ConditionType.STALLED) == ("True", "ChildInvalid")  # kstatus: Failed
    assert world.cond(ConditionType.READY)[0] == "False" and world.cond(ConditionType.COMPLETE)[0] == "False"
    said = f"creating Service digits-aggregator: the API server answered 422: {_INVALID_SERVICE}"
    assert _message(world, ConditionType.FAILED) == said
    assert world.status.phase == "Failed" and world.status.completion_time == "2030-01-02T03:04:05Z"
    assert world.events.count(("Warning", "ChildInvalid")) == 1  # Failed and Stalled say it once between them
    assert world.pod is None and "Service" not in world.present
    # It can never work: nothing is tried again, and the status stays as it is.
    assert world.step(at(30)).idle


def test_a_forbidden_pod_stalls_the_job_until_it_is_allowed(credentials: JobCredentials) -> None:
    world = World(credentials)
    world.refuse("Pod", 403, _PODSECURITY)
    world.step(at(0))
    assert world.present == ALL_STATIC and world.pod is None  # every child before the pod was made
    assert world.cond(ConditionType.STALLED) == ("True", "ChildForbidden")
    assert _message(world, ConditionType.STALLED) == (
        f"creating Pod digits-aggregator: the API server answered 403: {_PODSECURITY}"
    )
    assert world.cond(ConditionType.READY) == ("False", "ChildForbidden")
    assert world.cond(ConditionType.RECONCILING) == ("False", "ChildForbidden")
    assert world.cond(ConditionType.FAILED) == ("False", "AsExpected")  # not over: it may be allowed later
    assert world.status.phase == "Pending"
    assert world.events.count(("Warning", "ChildForbidden")) == 1
    # Refused again for the same reason: nothing new to say (no status patch, no second Event).
    assert world.step(at(5)).idle
    # Refused for another reason: the condition says the new one, and an Event says it once.
    world.refuse("Pod", 403, 'pods "digits-aggregator" is forbidden: exceeded quota: compute, requested: cpu=1')
    world.step(at(10))
    assert "exceeded quota" in _message(world, ConditionType.STALLED)
    stalled = world.status.condition(ConditionType.STALLED)
    assert stalled is not None and stalled.last_transition_time == "2030-01-02T03:04:05Z"  # True all along
    assert world.events.count(("Warning", "ChildForbidden")) == 2
    # Allowed (the namespace's policy or quota changed): the pod is made and the job is no longer stalled.
    world.refusing.clear()
    world.step(at(20))
    assert world.pod is not None
    assert world.cond(ConditionType.STALLED) == ("False", "AsExpected")
    assert world.cond(ConditionType.RECONCILING) == ("True", "CreatingAggregator")
    world.pod_runs()
    world.step(at(21))
    assert world.cond(ConditionType.READY) == ("True", "AggregatorReady")


@pytest.mark.parametrize(
    ("status", "reason", "ends"),
    [
        (400, "ChildInvalid", True),
        (422, "ChildInvalid", True),
        (403, "ChildForbidden", False),
        (404, "ChildRequestFailed", False),  # e.g. the namespace is being deleted
        (409, "ChildRequestFailed", False),
        (429, "ChildRequestFailed", False),
        (500, "ChildRequestFailed", False),  # e.g. an admission webhook that cannot be reached
        (503, "ChildRequestFailed", False),
        (None, "ChildNameTaken", False),  # the name is taken by an object of another owner
    ],
)
def test_only_a_refusal_that_can_never_pass_fails_the_job(
    credentials: JobCredentials, status: int | None, reason: str, ends: bool
) -> None:
    failure = ChildFailure("create", "ConfigMap", "digits-aggregator", status, "the answer")
    assert (failure.reason, failure.permanent) == (reason, ends)
    plan = refused(JobRef.from_body(job_body()), failure, at(0))
    status_after = FederatedJobStatus.model_validate(plan.status)
    assert status_after.is_true(ConditionType.FAILED) is ends
    assert status_after.is_true(ConditionType.STALLED)
    stalled = status_after.condition(ConditionType.STALLED)
    assert stalled is not None and stalled.reason == reason and stalled.message.endswith("the answer")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", reason)]


def test_a_refusal_after_the_job_ended_changes_nothing(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    world.aggregator_reports(round=3)
    world.step(at(30))
    failure = ChildFailure("delete", "Pod", "digits-aggregator", 500, "etcd timeout")
    assert refused(JobRef.from_body(world.body), failure, at(31)).idle


def test_a_stored_job_whose_name_no_child_may_have_fails_without_making_any(credentials: JobCredentials) -> None:
    # A dotted name passes the API server's check of a custom resource's name, but no Service may have it. The
    # CRD refuses it now; a job stored before that fails at once, saying why, instead of half its children.
    world = World(credentials, name="my.job")
    plan = world.step(at(0))
    assert not plan.create
    assert world.cond(ConditionType.FAILED) == ("True", "InvalidName")
    assert world.cond(ConditionType.STALLED) == ("True", "InvalidName")
    assert _message(world, ConditionType.FAILED).startswith("metadata.name: must consist of lowercase letters")
    assert world.events == [("Warning", "InvalidName")]


# --- the record of an ended job -----------------------------------------------------------------------


def test_a_completed_job_keeps_no_stale_pod_phase_or_endpoint(credentials: JobCredentials) -> None:
    world = running_world(credentials)
    assert world.status.endpoint is not None
    world.aggregator_reports(round=3)
    world.step(at(30))
    assert world.status.phase == "Complete"
    assert world.status.endpoint is None  # nothing serves devices any more
    pod = world.status.aggregator_pod
    assert pod is not None and pod.phase == "Running"  # true: it lingers before it exits
    assert world.pod is not None
    world.pod["status"]["phase"] = "Succeeded"
    world.step(at(40))
    pod = world.status.aggregator_pod
    assert pod is not None and pod.phase == "Succeeded"
    world.pod = None  # removed: the record of how it finished stays
    assert world.step(at(50)).idle
    assert world.status.aggregator_pod == pod


def test_a_failed_jobs_stopped_pod_leaves_no_running_record(credentials: JobCredentials) -> None:
    world = running_world(credentials, {**SPEC, "activeDeadlineSeconds": 100})
    plan = world.step(at(101))
    assert plan.delete_pod and world.status.endpoint is None
    world.step(at(102))  # the pod is gone; it was last seen Running, which it no longer is
    assert world.status.aggregator_pod is None and world.status.endpoint is None
    assert world.step(at(103)).idle


def test_a_job_that_ended_with_a_stale_record_is_corrected(credentials: JobCredentials) -> None:
    # What an earlier operator left: Complete, with the pod's last phase Running and the endpoint still set.
    world = running_world(credentials)
    world.aggregator_reports(round=3)
    world.step(at(30))
    world.body["status"].update(
        endpoint="127.0.10.7:50051",
        aggregatorPod={"name": "digits-aggregator", "uid": "old", "phase": "Running", "restarts": 0},
    )
    world.pod = None
    world.step(at(40))
    assert world.status.endpoint is None and world.status.aggregator_pod is None
    assert world.cond(ConditionType.COMPLETE)[0] == "True"


def test_a_huge_api_message_is_cut_so_the_status_can_still_be_written(credentials: JobCredentials) -> None:
    # A webhook may answer anything; a condition message over the schema's 32768 would be refused in turn.
    failure = ChildFailure("create", "Pod", "digits-aggregator", 500, "webhook says: " + "x" * 100_000)
    said = failure.describe()
    assert len(said) < 2100 and said.endswith("…") and "webhook says: xxx" in said
    plan = refused(JobRef.from_body(job_body()), failure, at(0))
    assert FederatedJobStatus.model_validate(plan.status).condition(ConditionType.STALLED) is not None

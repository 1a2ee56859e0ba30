"""The Argo CD health checks (charts/fedfleet/files/argocd/*/health.lua), run by a real Lua 5.1 interpreter
(lupa; Argo CD's gopher-lua speaks Lua 5.1) on status objects the operator's own code writes: the
FederatedJob's from its reconcile plans, the ModelRollout's from its step machine and conditions.
Also: the argocd-cm snippet and the examples/gitops copies stay equal to what `make gitops-examples` makes."""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from lupa import lua51

from fedfleet.api.modelrollout import ModelRolloutSpec
from fedfleet.api.rollout_actions import Action
from fedfleet.api.rollout_status import ModelRolloutStatus, RolloutPhase, RolloutReason
from fedfleet.api.status import Reason
from fedfleet.operator.config import OperatorConfig
from fedfleet.operator.job import JobRef
from fedfleet.operator.reconcile import ChildFailure, Observed, reconcile, refused
from fedfleet.operator.resources import JobCredentials, new_job_credentials
from fedfleet.rollout.analysis import RunPhase
from fedfleet.rollout.health import conditions_for
from fedfleet.rollout.step_state import StepState
from fedfleet.rollout.steps import Observation, RunResult, decide

REPO = Path(__file__).resolve().parents[3]
CHECKS = REPO / "charts" / "fedfleet" / "files" / "argocd"
GITOPS = REPO / "examples" / "gitops"
JOB_CHECK = CHECKS / "fedfleet.io_FederatedJob" / "health.lua"
ROLLOUT_CHECK = CHECKS / "fedfleet.io_ModelRollout" / "health.lua"
T0 = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def argocd_health(check: Path, obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD makes of `obj`: the script runs as a chunk with the object as the global `obj`."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(check.read_text(encoding="utf-8"))
    health = dict(result.items())
    assert set(health) == {"status", "message"}, health
    return health


# --- FederatedJob -------------------------------------------------------------------------------------------

SPEC: dict[str, Any] = {
    "rounds": 3,
    "seed": 1,
    "model": {"architecture": "logistic"},
    "cohort": {"clientsPerRound": 3, "minReports": 2, "roundDeadlineSeconds": 20},
    "simulation": {"devices": 4, "dataset": "digits", "testSamples": 200},
    "activeDeadlineSeconds": 600,
}


@pytest.fixture(scope="module")
def credentials() -> JobCredentials:
    return new_job_credentials("team-a/digits")


class StoredJob:
    """A FederatedJob as the API server holds it, its status written by applying the operator's plans."""

    def __init__(self, credentials: JobCredentials) -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "fedfleet.io/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "digits", "namespace": "team-a", "uid": "0f1e2d3c-uid", "generation": 1},
            "spec": copy.deepcopy(SPEC),
        }
        self.credentials = credentials
        self.present: set[str] = set()
        self.configmap: dict[str, str] | None = None
        self.pod: dict[str, Any] | None = None

    def reconcile(self, seconds: float) -> None:
        observed = Observed(pod=self.pod, present=frozenset(self.present), configmap_data=self.configmap)
        creds = self.credentials if "Secret" not in self.present else None
        plan = reconcile(JobRef.from_body(self.body), observed, OperatorConfig(), _at(seconds), creds)
        for obj in plan.create:
            if obj["kind"] == "Pod":
                self.pod = {**copy.deepcopy(obj), "status": {"phase": "Pending"}}
            else:
                self.present.add(obj["kind"])
                self.configmap = obj["data"] if obj["kind"] == "ConfigMap" else self.configmap
        if plan.delete_pod:
            self.pod = None
        self._write_status(plan.status)

    def refuse(self, failure: ChildFailure, seconds: float) -> None:
        self._write_status(refused(JobRef.from_body(self.body), failure, _at(seconds)).status)

    def pod_serves(self) -> None:
        assert self.pod is not None
        self.pod["status"] = {
            "phase": "Running",
            "podIP": "127.0.10.7",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "aggregator", "ready": True, "restartCount": 0, "state": {"running": {}}}],
        }

    def aggregator_reports(self, **fields: Any) -> None:
        self._write_status(fields)

    def edit_spec(self, **changes: Any) -> None:
        self.body["spec"].update(changes)
        self.body["metadata"]["generation"] += 1

    def _write_status(self, patch: dict[str, Any]) -> None:
        status = {**self.body.get("status", {}), **patch}
        self.body["status"] = {key: value for key, value in status.items() if value is not None}

    def condition(self, kind: str) -> dict[str, Any]:
        return next(c for c in self.body["status"]["conditions"] if c["type"] == kind)

    def health(self) -> dict[str, str]:
        return argocd_health(JOB_CHECK, self.body)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _said(condition: dict[str, Any]) -> str:
    return f"{condition['reason']}: {condition['message']}"


def running_job(credentials: JobCredentials) -> StoredJob:
    job = StoredJob(credentials)
    job.reconcile(0)
    job.pod_serves()
    job.reconcile(1)
    return job


def test_a_job_nobody_has_reconciled_yet_is_progressing(credentials: JobCredentials) -> None:
    assert StoredJob(credentials).health() == {
        "status": "Progressing",
        "message": "Waiting for the fedfleet operator to report the job's status",
    }


def test_a_pending_job_is_progressing_and_says_what_it_waits_for(credentials: JobCredentials) -> None:
    job = StoredJob(credentials)
    job.reconcile(0)
    assert job.body["status"]["phase"] == "Pending"
    reconciling = job.condition("Reconciling")
    assert reconciling["reason"] == Reason.CREATING_AGGREGATOR
    assert job.health() == {"status": "Progressing", "message": _said(reconciling)}


def test_a_running_job_is_progressing_with_its_rounds_and_endpoint(credentials: JobCredentials) -> None:
    job = running_job(credentials)
    job.aggregator_reports(round=1, participants=3)
    job.reconcile(2)
    assert job.body["status"]["phase"] == "Running"
    ready = job.condition("Ready")
    assert ready["status"] == "True" and "127.0.10.7" in ready["message"]
    assert job.health() == {"status": "Progressing", "message": f"1 of 3 rounds done; {_said(ready)}"}


def test_a_complete_job_is_healthy(credentials: JobCredentials) -> None:
    job = running_job(credentials)
    job.aggregator_reports(round=3, accuracy=0.91)
    job.reconcile(30)
    complete = job.condition("Complete")
    assert job.body["status"]["phase"] == "Complete" and complete["reason"] == Reason.ROUNDS_COMPLETED
    assert "accuracy 0.9100" in complete["message"]
    assert job.health() == {"status": "Healthy", "message": _said(complete)}


def test_a_failed_job_is_degraded_with_the_reason(credentials: JobCredentials) -> None:
    job = running_job(credentials)
    job.reconcile(SPEC["activeDeadlineSeconds"] + 5)
    failed = job.condition("Failed")
    assert job.body["status"]["phase"] == "Failed" and failed["reason"] == Reason.DEADLINE_EXCEEDED
    assert job.health() == {"status": "Degraded", "message": _said(failed)}


def test_a_stalled_job_is_degraded_while_it_may_still_recover(credentials: JobCredentials) -> None:
    job = StoredJob(credentials)
    message = 'pods "digits-aggregator" is forbidden: violates PodSecurity "restricted:latest"'
    job.refuse(ChildFailure("create", "Pod", "digits-aggregator", 403, message), 0)
    stalled = job.condition("Stalled")
    assert stalled["status"] == "True" and job.condition("Failed")["status"] == "False"
    assert job.health() == {"status": "Degraded", "message": _said(stalled)}
    assert "PodSecurity" in job.health()["message"]


def test_a_suspended_job_is_suspended(credentials: JobCredentials) -> None:
    job = running_job(credentials)
    job.edit_spec(suspend=True)
    job.reconcile(10)
    assert job.body["status"]["phase"] == "Suspended"
    running = job.condition("Running")
    assert running["reason"] == Reason.SUSPENDED
    assert job.health() == {"status": "Suspended", "message": _said(running)}


def test_a_status_older_than_the_spec_waits_for_the_controller(credentials: JobCredentials) -> None:
    job = StoredJob(credentials)
    job.reconcile(0)
    job.aggregator_reports(round=3)  # even a status that would read as done
    job.edit_spec(rounds=5)
    assert job.body["status"]["observedGeneration"] == 1
    assert job.health() == {"status": "Progressing", "message": "Waiting for the controller to observe generation 2"}
    job.reconcile(1)
    assert "observe generation" not in job.health()["message"]


# --- ModelRollout -------------------------------------------------------------------------------------------

CANDIDATE = "sha256:" + "a" * 64
ROLLOUT_SPEC = ModelRolloutSpec.model_validate(
    {
        "model": {"federatedJob": "digits-fedavg"},
        "analysis": {
            "metrics": [
                {
                    "name": "accuracy",
                    "successCondition": "result >= 0.9",
                    "provider": {"builtin": {"metric": "accuracy"}},
                }
            ]
        },
        "steps": [{"setWeight": 10}, {"analysis": {"metrics": ["accuracy"]}}, {"pause": {}}, {"setWeight": 100}],
    }
)
NOW = T0.timestamp()


def advance(state: StepState, seconds: float, **observed: Any) -> StepState:
    """The state the step machine decides on, as the controller calls it."""
    observation = Observation(now=NOW + seconds, model_key=ROLLOUT_SPEC.model.key, candidate=CANDIDATE, **observed)
    return decide(ROLLOUT_SPEC, state, observation).state


def rollout(state: StepState, generation: int = 1, observed: int | None = None) -> dict[str, Any]:
    """The ModelRollout with the status the controller patches for `state` (its step-machine fields, the
    generation it observed and the conditions), read back through the status model as a client sees it."""
    seen = generation if observed is None else observed
    patch = {
        **state.to_status(),
        "observedGeneration": seen,
        "conditions": [c.model_dump(by_alias=True, exclude_none=True) for c in conditions_for(state, seen, NOW)],
    }
    status = ModelRolloutStatus.model_validate(patch).model_dump(by_alias=True, exclude_none=True, mode="json")
    return {
        "apiVersion": "fedfleet.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "digits", "namespace": "team-a", "generation": generation},
        "spec": ROLLOUT_SPEC.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "status": status,
    }


def analysing() -> StepState:
    state = advance(StepState(), 0)
    assert state.phase == RolloutPhase.PROGRESSING and state.weight == 10 and state.step_run is not None
    return state


def test_a_rollout_stepping_through_its_weights_is_progressing() -> None:
    state = analysing()
    assert state.reason == RolloutReason.ANALYSIS_RUNNING
    assert argocd_health(ROLLOUT_CHECK, rollout(state)) == {
        "status": "Progressing",
        "message": f"Weight 10%; AnalysisRunning: {state.message}",
    }


def test_a_rollout_waiting_for_promotion_is_suspended() -> None:
    before = analysing()
    state = advance(before, 60, step_analysis=RunResult(before.step_run or 0, RunPhase.SUCCESSFUL))
    assert state.phase == RolloutPhase.PAUSED and state.reason == RolloutReason.WAITING_FOR_PROMOTION
    assert argocd_health(ROLLOUT_CHECK, rollout(state)) == {
        "status": "Suspended",
        "message": f"Weight 10%; WaitingForPromotion: {state.message}",
    }


def test_an_inconclusive_analysis_suspends_the_rollout() -> None:
    before = analysing()
    state = advance(before, 60, step_analysis=RunResult(before.step_run or 0, RunPhase.INCONCLUSIVE))
    assert state.phase == RolloutPhase.PAUSED and state.reason == RolloutReason.ANALYSIS_INCONCLUSIVE
    assert argocd_health(ROLLOUT_CHECK, rollout(state)) == {
        "status": "Suspended",
        "message": f"Weight 10%; AnalysisInconclusive: {state.message}",
    }


def test_an_aborted_rollout_is_degraded() -> None:
    before = analysing()
    state = advance(before, 60, step_analysis=RunResult(before.step_run or 0, RunPhase.FAILED))
    assert state.phase == RolloutPhase.DEGRADED and state.reason == RolloutReason.ANALYSIS_FAILED
    assert state.weight == 0 and state.message
    assert argocd_health(ROLLOUT_CHECK, rollout(state)) == {
        "status": "Degraded",
        "message": f"AnalysisFailed: {state.message}",
    }


def test_a_finished_rollout_is_healthy() -> None:
    before = analysing()
    waiting = advance(before, 60, step_analysis=RunResult(before.step_run or 0, RunPhase.SUCCESSFUL))
    state = advance(waiting, 120, action=Action.PROMOTE, action_id="promote-1")
    assert state.phase == RolloutPhase.HEALTHY and state.weight == 100 and state.stable == CANDIDATE
    assert state.reason == RolloutReason.ROLLOUT_COMPLETED
    assert argocd_health(ROLLOUT_CHECK, rollout(state)) == {
        "status": "Healthy",
        "message": f"RolloutCompleted: {state.message}",
    }


def test_a_rollout_status_older_than_the_spec_waits_for_the_controller() -> None:
    before = analysing()
    aborted = advance(before, 60, step_analysis=RunResult(before.step_run or 0, RunPhase.FAILED))
    assert argocd_health(ROLLOUT_CHECK, rollout(aborted, generation=3, observed=2)) == {
        "status": "Progressing",
        "message": "Waiting for the controller to observe generation 3",
    }


def test_a_rollout_nobody_has_reconciled_yet_is_progressing() -> None:
    obj = rollout(StepState())
    del obj["status"]
    assert argocd_health(ROLLOUT_CHECK, obj)["status"] == "Progressing"


# --- what users get: the argocd-cm snippet and examples/gitops ----------------------------------------------


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_argocd_health", REPO / "charts" / "render_argocd_health.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_argocd_cm_snippet_is_a_fresh_render() -> None:
    renderer = _renderer()
    committed = (GITOPS / "argocd-cm-health.yaml").read_text(encoding="utf-8")
    assert committed == renderer.render(renderer.health_checks()), "run `make argocd-health`"


def test_the_snippet_holds_each_check_exactly_as_argo_cd_will_run_it() -> None:
    configmap = yaml.safe_load((GITOPS / "argocd-cm-health.yaml").read_text(encoding="utf-8"))
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"] == "argocd-cm"
    assert configmap["data"] == {
        "resource.customizations.health.fedfleet.io_FederatedJob": JOB_CHECK.read_text(encoding="utf-8"),
        "resource.customizations.health.fedfleet.io_ModelRollout": ROLLOUT_CHECK.read_text(encoding="utf-8"),
    }


def test_a_check_yaml_cannot_carry_verbatim_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "fedfleet.io_Bad").mkdir()
    (tmp_path / "fedfleet.io_Bad" / "health.lua").write_text("local hs = {}\t\nreturn hs\n", encoding="utf-8")
    renderer = _renderer()
    with pytest.raises(ValueError, match=r"fedfleet.io_Bad/health.lua: tabs or trailing whitespace"):
        renderer.render(renderer.health_checks(tmp_path))


def test_the_gitops_kustomization_lists_copies_of_the_cluster_examples() -> None:
    kustomization = yaml.safe_load((GITOPS / "kustomization.yaml").read_text(encoding="utf-8"))
    copies = {"federatedjob.yaml": "federatedjob-cluster.yaml", "modelrollout.yaml": "rollout-cluster.yaml"}
    assert kustomization["resources"] == list(copies)
    for copied, original in copies.items():
        assert (GITOPS / copied).read_bytes() == (REPO / "examples" / original).read_bytes(), (
            "run `make gitops-examples`"
        )
    kinds = {yaml.safe_load((GITOPS / name).read_text(encoding="utf-8"))["kind"] for name in copies}
    assert kinds == {"FederatedJob", "ModelRollout"}

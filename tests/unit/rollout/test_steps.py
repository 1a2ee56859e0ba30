"""The step machine: every transition, users' actions, the progress deadline, idempotence, and invariants over
random sequences of observations (weight never goes down but on abort, stable changes only on completion)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfleet.api.modelrollout import ModelRolloutSpec
from fedfleet.api.rollout_status import ModelRolloutStatus, RolloutPhase, RolloutReason
from fedfleet.rollout.analysis import RunPhase
from fedfleet.rollout.step_state import StepState
from fedfleet.rollout.steps import Action, Decision, Event, Observation, RunResult, decide, steps_hash

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
KEY = "federatedJob/mnist"
OTHER_KEY = "artifact/" + B
T0 = 1_800_000_000.0
ACCURACY = {"name": "accuracy", "successCondition": "result >= 0.9", "provider": {"builtin": {"metric": "accuracy"}}}
FAILURES = {"name": "failures", "failureCondition": "result > 0.01", "provider": {"builtin": {"metric": "loss"}}}
#: 1% → analysis → 5% → 30 s → 25% → until promoted → 100%.
STEPS: list[dict[str, Any]] = [
    {"setWeight": 1},
    {"analysis": {"metrics": ["accuracy"]}},
    {"setWeight": 5},
    {"pause": {"duration": "30s"}},
    {"setWeight": 25},
    {"pause": {}},
    {"setWeight": 100},
]


def make_spec(steps: list[dict[str, Any]] | None = None, background: bool = False, **extra: Any) -> ModelRolloutSpec:
    analysis: dict[str, Any] = {"metrics": [ACCURACY, FAILURES]}
    if background:
        analysis["background"] = ["failures"]
    wire = {"model": {"federatedJob": "mnist"}, "analysis": analysis, "steps": steps or STEPS, **extra}
    return ModelRolloutSpec.model_validate(wire)


@dataclass
class Rollout:
    """Drives the machine as the controller does: each decision's state is the next observation's state."""

    spec: ModelRolloutSpec = field(default_factory=make_spec)
    state: StepState = field(default_factory=StepState)
    now: float = T0
    last: Decision | None = None
    observation: Observation | None = None
    actions: itertools.count[int] = field(default_factory=itertools.count)

    def see(
        self,
        after: float = 0.0,
        candidate: str | None = A,
        key: str = KEY,
        step: RunPhase | None = None,
        background: RunPhase | None = None,
        action: Action | None = None,
        step_run: int | None = None,
        background_run: int | None = None,
    ) -> Decision:
        """Observe, `after` seconds later. Analysis phases are for the current runs unless told otherwise."""
        self.now += after
        observation = Observation(
            now=self.now,
            model_key=key,
            candidate=candidate,
            step_analysis=_result(step, step_run if step_run is not None else self.state.step_run),
            background_analysis=_result(
                background, background_run if background_run is not None else self.state.background_run
            ),
            action=action,
            action_id=f"request-{next(self.actions)}" if action is not None else "",
        )
        self.observation = observation
        self.last = decide(self.spec, self.state, observation)
        self.state = self.last.state
        return self.last

    @property
    def reasons(self) -> list[str]:
        assert self.last is not None
        return [event.reason for event in self.last.events]


def _result(phase: RunPhase | None, run: int | None) -> RunResult | None:
    return RunResult(run, phase) if phase is not None and run is not None else None


def started() -> Rollout:
    """A rollout whose candidate is known: weight 1, the first analysis running."""
    rollout = Rollout()
    rollout.see()
    return rollout


def at_promotion_pause() -> Rollout:
    rollout = started()
    rollout.see(step=RunPhase.SUCCESSFUL)
    rollout.see(after=30)
    assert rollout.state.phase == RolloutPhase.PAUSED and rollout.state.weight == 25
    return rollout


# --- revisions and the model ---------------------------------------------------------------------------------


def test_a_new_rollout_waits_for_its_model_without_touching_devices() -> None:
    rollout = Rollout()
    decision = rollout.see(candidate=None)
    state = decision.state
    assert (state.revision, state.model_key, state.phase, state.reason) == (
        1,
        KEY,
        RolloutPhase.PENDING,
        RolloutReason.WAITING_FOR_MODEL,
    )
    assert state.weight == 0 and state.candidate is None and state.step_index == 0
    assert rollout.reasons == ["NewRevision", "WaitingForModel"]
    assert not decision.run_step_analysis and not decision.run_background
    # Waiting for a model (a FederatedJob still training) has no deadline.
    rollout.see(after=10 * 24 * 3600, candidate=None)
    assert rollout.state.phase == RolloutPhase.PENDING and rollout.reasons == []


def test_the_model_arriving_starts_the_steps_weight_then_analysis() -> None:
    rollout = Rollout()
    rollout.see(candidate=None)
    decision = rollout.see(after=60)
    state = decision.state
    assert state.candidate == A and state.phase == RolloutPhase.PROGRESSING
    assert state.weight == 1 and state.step_index == 1 and state.reason == RolloutReason.ANALYSIS_RUNNING
    assert rollout.reasons == ["ModelAvailable", "WeightSet", "AnalysisRunning"]
    assert decision.run_step_analysis == ("accuracy",) and decision.reset_step_analysis
    assert state.step_run == 1 and state.run_serial == 1
    assert state.steps_hash == steps_hash(rollout.spec) and state.revision_started_at == T0


def test_a_whole_rollout_to_healthy() -> None:
    rollout = started()
    assert rollout.see(after=10, step=RunPhase.RUNNING).state.step_index == 1  # measuring: nothing moves
    decision = rollout.see(after=10, step=RunPhase.SUCCESSFUL)
    assert decision.state.weight == 5 and decision.state.reason == RolloutReason.TIMED_PAUSE
    assert decision.reset_step_analysis and decision.run_step_analysis == ()
    assert rollout.reasons == ["AnalysisSuccessful", "WeightSet", "TimedPause"]
    rollout.see(after=29)
    assert rollout.state.weight == 5, "the pause is not over"
    rollout.see(after=1)
    assert rollout.state.weight == 25 and rollout.state.phase == RolloutPhase.PAUSED
    assert rollout.state.reason == RolloutReason.WAITING_FOR_PROMOTION
    rollout.see(after=3600)
    assert rollout.state.weight == 25, "pause: {} waits for promotion, however long"
    rollout.see(action=Action.PROMOTE)
    state = rollout.state
    assert (state.phase, state.weight, state.stable, state.candidate) == (RolloutPhase.HEALTHY, 100, A, None)
    assert state.step_index == len(STEPS) and state.reason == RolloutReason.ROLLOUT_COMPLETED
    assert rollout.reasons == ["Promoted", "WeightSet", "RolloutCompleted"]
    # Done is done: nothing more happens, and the same model is not rolled out again.
    rollout.see(after=3600)
    assert rollout.state == state and rollout.reasons == []


def test_a_new_model_mid_rollout_starts_a_new_revision_at_step_zero() -> None:
    rollout = at_promotion_pause()
    decision = rollout.see(key=OTHER_KEY, candidate=None)
    state = decision.state
    assert (state.revision, state.model_key, state.step_index, state.weight) == (2, OTHER_KEY, 0, 0)
    assert state.phase == RolloutPhase.PENDING and state.candidate is None
    assert rollout.reasons[0] == "NewRevision"
    rollout.see(key=OTHER_KEY, candidate=B)
    assert rollout.state.candidate == B and rollout.state.weight == 1 and rollout.state.revision == 2


def test_the_same_key_naming_new_content_is_a_new_revision() -> None:
    # The FederatedJob was deleted, recreated and trained again: spec.model reads the same, the model is not.
    rollout = at_promotion_pause()
    rollout.see(candidate=B)
    assert rollout.state.revision == 2 and rollout.state.candidate == B and rollout.state.weight == 1
    healthy = Rollout(spec=make_spec([{"setWeight": 100}]))
    healthy.see()
    assert healthy.state.phase == RolloutPhase.HEALTHY and healthy.state.stable == A
    healthy.see(candidate=B)  # rolled out in its one step
    assert healthy.state.revision == 2 and healthy.state.stable == B and healthy.state.candidate is None
    assert healthy.reasons == ["NewRevision", "ModelAvailable", "WeightSet", "RolloutCompleted"]


def test_a_candidate_that_is_already_stable_completes_at_once() -> None:
    rollout = Rollout(state=StepState(stable=A))
    rollout.see()
    assert rollout.state.phase == RolloutPhase.HEALTHY and rollout.state.reason == RolloutReason.ALREADY_STABLE
    assert rollout.state.weight == 100 and rollout.state.candidate is None and rollout.state.stable == A


# --- analysis ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "reason"), [(RunPhase.FAILED, "AnalysisFailed"), (RunPhase.ERROR, "AnalysisError")]
)  # fmt: skip
def test_a_failed_or_erroring_analysis_aborts(phase: RunPhase, reason: str) -> None:
    rollout = started()
    decision = rollout.see(after=5, step=phase)
    state = decision.state
    assert (state.phase, state.reason, state.weight) == (RolloutPhase.DEGRADED, reason, 0)
    assert state.aborted_at == T0 + 5 and state.candidate == A, "the candidate is kept for a retry"
    assert "step 2/7" in state.message and "accuracy" in state.message
    assert [e.type for e in decision.events] == ["Warning"] and decision.run_step_analysis == ()
    rollout.see(after=3600, step=RunPhase.SUCCESSFUL, step_run=1)
    assert rollout.state.phase == RolloutPhase.DEGRADED and rollout.state.weight == 0, "aborted stays aborted"


def test_an_inconclusive_analysis_pauses_until_a_person_decides() -> None:
    rollout = started()
    decision = rollout.see(step=RunPhase.INCONCLUSIVE)
    assert decision.state.phase == RolloutPhase.PAUSED and decision.state.reason == RolloutReason.ANALYSIS_INCONCLUSIVE
    assert decision.events[0].type == "Warning" and decision.run_step_analysis == ()
    assert decision.state.weight == 1
    rollout.see(after=7 * 24 * 3600, step=RunPhase.INCONCLUSIVE)
    assert rollout.state.phase == RolloutPhase.PAUSED and rollout.state.weight == 1, "no data never passes"
    # retry: the analysis runs again, under a new id; the old run's verdict no longer counts.
    decision = rollout.see(action=Action.RETRY, step=RunPhase.INCONCLUSIVE, step_run=1)
    assert decision.state.phase == RolloutPhase.PROGRESSING and decision.state.step_run == 2
    assert decision.run_step_analysis == ("accuracy",) and decision.reset_step_analysis
    rollout.see(step=RunPhase.SUCCESSFUL)
    assert rollout.state.weight == 5


def test_promote_skips_an_inconclusive_analysis() -> None:
    rollout = started()
    rollout.see(step=RunPhase.INCONCLUSIVE)
    rollout.see(action=Action.PROMOTE)
    assert (
        rollout.state.weight == 5 and rollout.state.step_index == 3 and rollout.state.phase == RolloutPhase.PROGRESSING
    )
    assert rollout.reasons == ["Promoted", "WeightSet", "TimedPause"]


def test_resume_after_an_inconclusive_analysis_runs_it_again() -> None:
    rollout = started()
    rollout.see(step=RunPhase.INCONCLUSIVE)
    rollout.see(action=Action.RESUME)
    assert rollout.state.step_run == 2 and rollout.state.phase == RolloutPhase.PROGRESSING


def test_a_result_of_another_run_never_moves_the_rollout() -> None:
    rollout = started()
    rollout.see(step=RunPhase.SUCCESSFUL, step_run=99)
    rollout.see(step=RunPhase.FAILED, step_run=0)
    assert rollout.state.weight == 1 and rollout.state.phase == RolloutPhase.PROGRESSING
    # Two analysis steps in a row: the first's success does not pass the second.
    rollout = Rollout(
        spec=make_spec([{"analysis": {"metrics": ["accuracy"]}}, {"analysis": {"metrics": ["failures"]}}])
    )
    rollout.see()
    first = rollout.state.step_run
    decision = rollout.see(step=RunPhase.SUCCESSFUL)
    assert decision.state.step_index == 1 and decision.run_step_analysis == ("failures",)
    rollout.see(step=RunPhase.SUCCESSFUL, step_run=first)
    assert rollout.state.step_index == 1 and rollout.state.phase == RolloutPhase.PROGRESSING


def test_background_analysis_runs_from_the_candidate_to_the_end() -> None:
    rollout = Rollout(spec=make_spec(background=True))
    assert not rollout.see(candidate=None).run_background
    decision = rollout.see()
    assert decision.run_background and decision.state.background_run is not None
    assert decision.state.background_run != decision.state.step_run
    first = decision.state.background_run
    # A run whose measurements passed: the watch goes on in a new run.
    decision = rollout.see(background=RunPhase.SUCCESSFUL)
    assert decision.run_background and decision.state.background_run not in (None, first)


@pytest.mark.parametrize(
    ("phase", "reason"), [(RunPhase.FAILED, "BackgroundAnalysisFailed"), (RunPhase.ERROR, "BackgroundAnalysisError")]
)  # fmt: skip
def test_a_background_failure_aborts_at_any_step_even_when_paused(phase: RunPhase, reason: str) -> None:
    rollout = Rollout(spec=make_spec(background=True))
    rollout.see()
    rollout.see(step=RunPhase.SUCCESSFUL)
    rollout.see(action=Action.PAUSE)
    decision = rollout.see(background=phase)
    assert (decision.state.phase, decision.state.reason, decision.state.weight) == (RolloutPhase.DEGRADED, reason, 0)
    assert not decision.run_background and not decision.run_step_analysis


def test_an_inconclusive_background_pauses_and_promote_resumes_the_watch() -> None:
    rollout = Rollout(spec=make_spec(background=True))
    rollout.see()
    decision = rollout.see(background=RunPhase.INCONCLUSIVE, step=RunPhase.SUCCESSFUL)
    assert decision.state.phase == RolloutPhase.PAUSED
    assert decision.state.reason == RolloutReason.BACKGROUND_ANALYSIS_INCONCLUSIVE
    assert decision.state.weight == 1, "held before the step's success is acted on"
    assert not decision.run_background
    held_run = decision.state.background_run
    decision = rollout.see(action=Action.PROMOTE, step=RunPhase.SUCCESSFUL)
    assert decision.run_background and decision.state.background_run != held_run
    assert decision.state.phase == RolloutPhase.PROGRESSING and decision.state.weight == 5


# --- users' actions -----------------------------------------------------------------------------------------


def test_abort_then_retry_runs_the_same_revision_from_step_zero() -> None:
    rollout = at_promotion_pause()
    rollout.see(action=Action.PAUSE)
    rollout.see(action=Action.ABORT)
    state = rollout.state
    assert (state.phase, state.reason, state.weight) == (RolloutPhase.DEGRADED, RolloutReason.ABORTED, 0)
    assert "aborted by a user" in state.message and rollout.last is not None
    assert rollout.last.events[0] == Event("Warning", "Aborted", rollout.last.events[0].message)
    rollout.see(after=60, action=Action.RETRY)
    state = rollout.state
    assert state.revision == 1 and state.candidate == A and state.aborted_at is None
    assert state.phase == RolloutPhase.PROGRESSING and state.weight == 1 and state.step_index == 1
    assert not state.paused_by_user, "retrying is asking it to go again"
    assert rollout.reasons == ["Retried", "WeightSet", "AnalysisRunning"]


def test_promote_full_completes_at_once() -> None:
    rollout = started()
    rollout.see(action=Action.PROMOTE_FULL)
    state = rollout.state
    assert (state.phase, state.weight, state.stable, state.reason) == (RolloutPhase.HEALTHY, 100, A, "PromotedFull")
    assert rollout.last is not None and not rollout.last.run_step_analysis


def test_pause_stops_the_steps_and_resume_goes_on_where_it_stopped() -> None:
    rollout = started()
    rollout.see(action=Action.PAUSE)
    assert rollout.state.phase == RolloutPhase.PAUSED and rollout.state.reason == RolloutReason.PAUSED_BY_USER
    decision = rollout.see(after=60, step=RunPhase.SUCCESSFUL)
    assert decision.state.weight == 1, "a success is not acted on while paused"
    assert decision.run_step_analysis == ("accuracy",), "the analysis keeps measuring"
    decision = rollout.see(action=Action.RESUME, step=RunPhase.SUCCESSFUL)
    assert decision.state.weight == 5 and decision.state.phase == RolloutPhase.PROGRESSING


def test_resume_starts_a_timed_pause_again() -> None:
    rollout = started()
    rollout.see(step=RunPhase.SUCCESSFUL)
    rollout.see(after=10, action=Action.PAUSE)
    rollout.see(after=60)
    assert rollout.state.weight == 5
    rollout.see(action=Action.RESUME)
    rollout.see(after=29)
    assert rollout.state.weight == 5
    rollout.see(after=1)
    assert rollout.state.weight == 25


def test_promote_lifts_a_pause_and_skips_the_current_pause_step() -> None:
    rollout = started()
    rollout.see(step=RunPhase.SUCCESSFUL)
    rollout.see(action=Action.PAUSE)
    rollout.see(action=Action.PROMOTE)
    assert not rollout.state.paused_by_user and rollout.state.weight == 25


def test_an_action_is_carried_out_once_per_request() -> None:
    rollout = at_promotion_pause()
    observation = Observation(now=rollout.now, model_key=KEY, candidate=A, action=Action.PROMOTE, action_id="p-1")
    once = decide(rollout.spec, replace(rollout.state), observation)
    twice = decide(rollout.spec, once.state, observation)
    assert once.state.handled_action == "p-1" and once.state.phase == RolloutPhase.HEALTHY
    assert twice.state == once.state and twice.events == ()


@pytest.mark.parametrize(
    ("prepare", "action", "why"),
    [
        (lambda r: r.see(action=Action.PROMOTE_FULL), Action.ABORT, "complete"),
        (lambda r: r.see(action=Action.ABORT), Action.ABORT, "aborted already"),
        (lambda r: r.see(action=Action.ABORT), Action.PROMOTE, "retry it"),
        (lambda r: r.see(action=Action.ABORT), Action.PROMOTE_FULL, "retry it"),
        (lambda r: r.see(), Action.RESUME, "not paused"),
        (lambda r: r.see(), Action.RETRY, "can be retried"),
        (lambda r: r.see(action=Action.PAUSE), Action.PAUSE, "paused already"),
        (lambda r: r.see(candidate=None), Action.PROMOTE, "waiting for federatedJob/mnist"),
    ],
)  # fmt: skip
def test_actions_that_make_no_sense_now_are_refused_with_a_warning(prepare: Any, action: Action, why: str) -> None:
    rollout = Rollout()
    prepare(rollout)
    before = rollout.state
    decision = rollout.see(action=action, candidate=before.candidate)
    (event,) = decision.events
    assert event.type == "Warning" and event.reason == "ActionIgnored" and why in event.message
    assert replace(decision.state, handled_action=None) == replace(before, handled_action=None)
    assert decision.state.handled_action is not None


def test_resume_at_a_promotion_pause_says_to_promote() -> None:
    rollout = at_promotion_pause()
    rollout.see(action=Action.RESUME)
    assert rollout.last is not None and "waiting to be promoted" in rollout.last.events[0].message


# --- the progress deadline ----------------------------------------------------------------------------------


def test_an_analysis_that_never_reports_is_aborted_at_the_deadline() -> None:
    rollout = Rollout(spec=make_spec(progressDeadlineSeconds=300))
    rollout.see()
    rollout.see(after=300)
    assert rollout.state.phase == RolloutPhase.PROGRESSING
    rollout.see(after=1)
    assert rollout.state.phase == RolloutPhase.DEGRADED
    assert rollout.state.reason == RolloutReason.PROGRESS_DEADLINE_EXCEEDED and rollout.state.weight == 0


def test_measuring_pausing_and_waiting_are_progress() -> None:
    measuring = Rollout(spec=make_spec(progressDeadlineSeconds=60))
    measuring.see()
    for _ in range(10):
        measuring.see(after=600, step=RunPhase.RUNNING)
    assert measuring.state.phase == RolloutPhase.PROGRESSING
    paused = Rollout(spec=make_spec(progressDeadlineSeconds=60))
    paused.see()
    paused.see(action=Action.PAUSE)
    paused.see(after=3600)
    assert paused.state.phase == RolloutPhase.PAUSED
    paused.see(action=Action.RESUME)  # the step's clock starts again
    paused.see(after=30)
    assert paused.state.phase == RolloutPhase.PROGRESSING
    long_pause = Rollout(spec=make_spec([{"setWeight": 1}, {"pause": {"duration": "2h"}}], progressDeadlineSeconds=60))
    long_pause.see()
    long_pause.see(after=3600)
    assert long_pause.state.phase == RolloutPhase.PROGRESSING


# --- spec edits --------------------------------------------------------------------------------------------


def test_edited_steps_start_again_at_zero_keeping_the_weight() -> None:
    rollout = at_promotion_pause()
    rollout.spec = make_spec([{"setWeight": 10}, {"pause": {}}, {"setWeight": 100}])
    decision = rollout.see()
    assert decision.state.step_index == 1 and decision.state.weight == 25, "a lower setWeight keeps the weight"
    assert rollout.reasons == ["StepsChanged", "WeightSet", "WaitingForPromotion"]
    assert decision.state.steps_hash == steps_hash(rollout.spec)


def test_removing_the_remaining_steps_does_not_jump_to_full_weight() -> None:
    rollout = at_promotion_pause()
    rollout.spec = make_spec([{"setWeight": 1}, {"pause": {}}])
    rollout.see()
    assert rollout.state.weight == 25 and rollout.state.phase == RolloutPhase.PAUSED


# --- idempotence and invariants ------------------------------------------------------------------------------


def _check_idempotent(spec: ModelRolloutSpec, observation: Observation, decision: Decision) -> None:
    again = decide(spec, decision.state, observation)
    assert again.state == decision.state
    assert again.events == ()
    assert again.reset_step_analysis is False
    assert (again.run_step_analysis, again.run_background) == (decision.run_step_analysis, decision.run_background)


def test_deciding_twice_on_the_same_observation_changes_nothing() -> None:
    rollout = Rollout(spec=make_spec(background=True))
    script: list[dict[str, Any]] = [
        {"candidate": None},
        {},
        {"step": RunPhase.SUCCESSFUL},
        {"after": 30},
        {"action": Action.PAUSE},
        {"action": Action.PROMOTE},
        {"background": RunPhase.SUCCESSFUL},
        {"key": OTHER_KEY},
        {"step": RunPhase.INCONCLUSIVE},
        {"action": Action.RETRY},
        {"step": RunPhase.FAILED},
        {"action": Action.RETRY},
        {"action": Action.PROMOTE_FULL},
    ]
    for index, step in enumerate(script):
        if index >= 7:  # from here on spec.model names the other model
            step = {"key": OTHER_KEY, "candidate": B, **step}
        decision = rollout.see(**step)
        assert rollout.observation is not None
        _check_idempotent(rollout.spec, rollout.observation, decision)
    assert rollout.state.phase == RolloutPhase.HEALTHY and rollout.state.stable == B


_SPEC = make_spec(
    [
        {"setWeight": 10},
        {"analysis": {"metrics": ["accuracy"]}},
        {"pause": {"duration": "1m"}},
        {"setWeight": 50},
        {"pause": {}},
        {"analysis": {"metrics": ["accuracy", "failures"]}},
        {"setWeight": 100},
    ],
    background=True,
    progressDeadlineSeconds=300,
)
_PHASES = st.sampled_from([None, *RunPhase])


@st.composite
def _observation(draw: st.DrawFn, state: StepState, now: float) -> Observation:
    key = draw(st.sampled_from([KEY, KEY, KEY, OTHER_KEY]))
    digest = {KEY: A, OTHER_KEY: B}[key]
    candidate = draw(st.sampled_from([digest, digest, digest, None, A if digest == B else B]))

    def result() -> RunResult | None:
        phase = draw(_PHASES)
        runs = [r for r in (state.step_run, state.background_run, state.run_serial, 0) if r is not None]
        return RunResult(draw(st.sampled_from(runs)), phase) if phase is not None else None

    action = draw(st.sampled_from([None, None, None, *Action]))
    return Observation(
        now=now,
        model_key=key,
        candidate=candidate,
        step_analysis=result(),
        background_analysis=result(),
        action=action,
        action_id=draw(st.sampled_from(["a", "b", "c"])) if action is not None else "",
    )


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_observations_keep_the_invariants(data: st.DataObject) -> None:
    state, now = StepState(), T0
    for _ in range(data.draw(st.integers(1, 30))):
        now += data.draw(st.sampled_from([0, 0, 1, 30, 61, 400]))
        observation = data.draw(_observation(state, now))
        decision = decide(_SPEC, state, observation)
        new = decision.state
        _check_invariants(state, new, observation, decision)
        _check_idempotent(_SPEC, observation, decision)
        # The state survives the status unchanged: what the next reconciliation reads is what was decided.
        assert StepState.from_status(ModelRolloutStatus.model_validate(new.to_status())) == new
        state = new


def _check_invariants(old: StepState, new: StepState, observation: Observation, decision: Decision) -> None:
    new_revision = new.revision > old.revision
    if new.weight < old.weight:
        assert new.phase == RolloutPhase.DEGRADED or new_revision, (old, new)
    if new.stable != old.stable:
        assert new.phase == RolloutPhase.HEALTHY and new.stable in (old.candidate, observation.candidate)
    assert 0 <= new.weight <= 100 and 0 <= new.step_index <= len(_SPEC.steps)
    assert new.model_key == observation.model_key and new.revision in (old.revision, old.revision + 1)
    assert new.revision >= 1
    assert new.run_serial >= old.run_serial
    for run in (new.step_run, new.background_run):
        assert run is None or 1 <= run <= new.run_serial
    if new.phase == RolloutPhase.HEALTHY:
        assert new.weight == 100 and new.candidate is None and new.stable is not None
    if new.phase == RolloutPhase.DEGRADED:
        assert new.weight == 0 and new.aborted_at is not None
        assert not decision.run_step_analysis and not decision.run_background
    if new.phase == RolloutPhase.PENDING:
        assert new.weight == 0 and new.candidate is None
    if new.candidate is None:
        assert new.weight in (0, 100) and not decision.run_step_analysis and not decision.run_background
    if decision.run_step_analysis:
        assert new.step_run is not None
        step = _SPEC.steps[new.step_index]
        assert step.analysis is not None and decision.run_step_analysis == step.analysis.metrics


def test_steps_edited_while_aborted_take_effect_on_retry() -> None:
    rollout = at_promotion_pause()
    rollout.see(action=Action.ABORT)
    rollout.spec = make_spec([{"setWeight": 50}, {"pause": {}}])
    decision = rollout.see()
    assert decision.events == () and decision.state.phase == RolloutPhase.DEGRADED and decision.state.weight == 0
    assert decision.state.steps_hash == steps_hash(rollout.spec)
    rollout.see(action=Action.RETRY)
    assert rollout.state.weight == 50 and rollout.state.step_index == 1


def test_the_steps_hash_ignores_how_a_step_is_written() -> None:
    written = make_spec([{"setWeight": 1}, {"pause": {}}])
    spelled_out = make_spec([{"setWeight": 1}, {"pause": {"duration": None}}])
    assert steps_hash(written) == steps_hash(spelled_out) != steps_hash(make_spec([{"setWeight": 2}, {"pause": {}}]))

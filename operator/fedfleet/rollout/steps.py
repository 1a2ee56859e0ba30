"""The canary step machine of a ModelRollout, as a pure function.

    decision = decide(spec, state, observation)

`state` is where the rollout stood (from its status), `observation` what the controller saw just now: the
clock, the candidate's digest once the model is published, the results of the analysis runs the machine
asked for, and a user's action. The decision is the new state, the Events to post and which analyses should
be running. Nothing here reads a clock, Kubernetes or Prometheus.

Semantics, after Argo Rollouts' canary strategy:

* A new `spec.model` (another key, or the same key now naming other content) starts a new **revision** at
  step 0 with weight 0: the previous candidate's devices go back to stable at once. Until the model is
  published (the FederatedJob still training) the rollout is Pending and nothing changes on devices; it
  waits without a deadline.
* `setWeight` raises the weight and goes on in the same reconciliation; `pause: {duration}` goes on once the
  duration has passed since the step started; `pause: {}` waits for `promote` (phase Paused). An `analysis`
  step asks for a run of its metrics and waits for it: Successful goes on, Failed or Error aborts,
  Inconclusive pauses (reason AnalysisInconclusive) until a person decides: `promote` skips the step,
  `retry` (or `resume`) runs the analysis again. No data never passes.
* Background metrics are measured from the moment the candidate is known until the rollout ends, in
  consecutive runs: Failed or Error aborts at any step, even while paused; Inconclusive pauses.
* **Abort** (a failed analysis, `abort`, the progress deadline): weight 0, phase Degraded with the reason;
  the candidate is kept, so `retry` runs the same revision again from step 0, and a new model starts a new
  revision. Past the last step (or on `promoteFull`) the weight is 100, the phase Healthy and the candidate
  becomes the stable version.
* The weight never goes down within a revision except on abort; a `setWeight` lower than the weight already
  reached keeps the weight (the spec's steps may have been edited). Editing `spec.steps` mid-revision
  starts the steps again at 0 (as Argo Rollouts does when the steps' hash changes), so that removing steps
  can never jump the weight to 100.
* **Progress deadline**: like Argo Rollouts, a paused rollout (a pause step, `pause`, an inconclusive
  analysis) makes no progress and is not expected to; an analysis that is measuring is progress, however
  long its `count` × `interval`. What the deadline catches is an analysis step whose run never reports at
  all (the controller or Prometheus stuck without even an error): after progressDeadlineSeconds on that
  step the rollout aborts with reason ProgressDeadlineExceeded. Waiting for the model is not stuck either.
* Users act through `Observation.action`, identified by `action_id`: an id is carried out once and recorded
  in the state (`handled_action`), so observing the same request again does nothing. An action that makes
  no sense in the current phase is refused with a Warning Event. `pause` stops the stepping (background
  failures still abort); `resume` lifts it and starts the current step's clock again (a timed pause waits
  its whole duration after a resume); `promote` lifts any pause and skips the current pause or analysis
  step; `promoteFull` completes the rollout at once; `abort` and `retry` are described above.

Analysis results are tagged with the id of the run they come from (`RunResult.run`): the machine hands out
a new id for every run it asks for (`StepState.step_run`, `background_run`) and reads only results carrying
the current id, so a stale result (of the previous step, of the run before a retry) can never move the
rollout. With that, deciding twice on the same observation gives the same state as deciding once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Literal

from fedfleet.api.duration import parse_duration
from fedfleet.api.modelrollout import ModelRolloutSpec, Step
from fedfleet.api.rollout_actions import Action
from fedfleet.api.rollout_status import RolloutPhase, RolloutReason
from fedfleet.rollout.analysis import RunPhase
from fedfleet.rollout.step_state import StepState
from fedfleet.rollout.timestamps import whole_seconds

Reason = RolloutReason
Hold = Literal["step", "background"]


@dataclass(frozen=True)
class RunResult:
    """The phase of an analysis run, and which run it is (the id the machine gave it)."""

    run: int
    phase: RunPhase


@dataclass(frozen=True)
class Observation:
    now: float  # epoch seconds
    model_key: str  # what spec.model names (ModelSource.key); a change starts a new revision
    candidate: str | None = None  # the resolved digest of that model; None while it is not published yet
    step_analysis: RunResult | None = None  # the run gating the current analysis step, if any
    background_analysis: RunResult | None = None  # the current background run, if any
    action: Action | None = None
    action_id: str = ""  # identifies the request (e.g. its annotation's value): each id is carried out once


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    state: StepState
    events: tuple[Event, ...] = ()
    #: The current analysis step's run changed (started, finished, or discarded): forget the old one's results.
    reset_step_analysis: bool = False
    #: Metrics the run `state.step_run` must measure now; empty when no step analysis should be running.
    run_step_analysis: tuple[str, ...] = ()
    #: Whether the background metrics must be measured now, in the run `state.background_run`.
    run_background: bool = False


def steps_hash(spec: ModelRolloutSpec) -> str:
    """Identifies spec.steps: the same steps, however written, give the same hash."""
    canonical = json.dumps([step.model_dump(mode="json", by_alias=True) for step in spec.steps], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def decide(spec: ModelRolloutSpec, state: StepState, observation: Observation) -> Decision:
    """Decide what the rollout does next. Pure: the same inputs always give the same decision."""
    draft = _Draft(spec, state, observation)
    draft.follow_the_model()
    draft.follow_the_steps_spec()
    draft.resolve_the_candidate()
    draft.carry_out_the_action()
    draft.resolve_the_candidate()  # a retry may have gone back to waiting for the model
    draft.watch_the_background()
    draft.step()
    draft.check_the_deadline()
    return draft.decision()


_TERMINAL = (RolloutPhase.HEALTHY, RolloutPhase.DEGRADED)
_ABORTING = {
    RunPhase.FAILED: (Reason.ANALYSIS_FAILED, Reason.BACKGROUND_ANALYSIS_FAILED),
    RunPhase.ERROR: (Reason.ANALYSIS_ERROR, Reason.BACKGROUND_ANALYSIS_ERROR),
}
_HOLD_REASONS: dict[str, Hold] = {
    Reason.ANALYSIS_INCONCLUSIVE: "step",
    Reason.BACKGROUND_ANALYSIS_INCONCLUSIVE: "background",
}


class _Draft:
    """The state being decided, and the Events collected on the way."""

    def __init__(self, spec: ModelRolloutSpec, state: StepState, observation: Observation) -> None:
        self.spec, self.old, self.obs = spec, state, observation
        self.now = whole_seconds(observation.now)
        self.s = state
        self.events: list[Event] = []
        # An inconclusive analysis holds the rollout until a person decides; it is told by the reason.
        self.hold: Hold | None = _HOLD_REASONS.get(state.reason) if state.phase == RolloutPhase.PAUSED else None
        self.fresh_step = False  # the current step was entered in this decision: announce it

    # --- helpers ----------------------------------------------------------------------------------------

    def set(self, **changes: object) -> None:
        self.s = replace(self.s, **changes)  # type: ignore[arg-type]

    def event(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(kind, reason, message))

    @property
    def terminal(self) -> bool:
        return self.s.phase in _TERMINAL

    @property
    def current(self) -> Step | None:
        steps = self.spec.steps
        return steps[self.s.step_index] if self.s.step_index < len(steps) else None

    def where(self) -> str:
        return f"step {self.s.step_index + 1}/{len(self.spec.steps)}"

    def new_run(self) -> int:
        self.set(run_serial=self.s.run_serial + 1)
        return self.s.run_serial

    def advance(self) -> None:
        self.set(step_index=self.s.step_index + 1, step_started_at=self.now, step_run=None)
        self.fresh_step = True

    def restart_steps(self) -> None:
        self.set(step_index=0, step_started_at=self.now, step_run=None)
        self.fresh_step = True

    def abort(self, reason: str, message: str) -> None:
        self.set(
            phase=RolloutPhase.DEGRADED,
            reason=reason,
            message=message,
            weight=0,
            aborted_at=self.now,
            step_run=None,
            background_run=None,
        )
        self.hold = None
        self.event("Warning", reason, f"{message}; weight 0: every device is back on the stable version")

    def complete(self, reason: str, message: str) -> None:
        candidate = self.s.candidate
        self.set(
            phase=RolloutPhase.HEALTHY,
            reason=reason,
            message=message,
            weight=100,
            stable=candidate,
            candidate=None,
            step_index=len(self.spec.steps),
            step_run=None,
            background_run=None,
            paused_by_user=False,
        )
        self.hold = None
        self.event("Normal", reason, f"{message}; {candidate} is the stable version")

    def ignore(self, action: Action, why: str) -> None:
        self.event("Warning", Reason.ACTION_IGNORED, f"{action}: {why}")

    # --- revisions and the candidate ---------------------------------------------------------------------

    def follow_the_model(self) -> None:
        if self.s.revision > 0 and self.obs.model_key == self.s.model_key and not self._content_changed():
            return
        revision = self.s.revision + 1
        self.set(
            revision=revision,
            model_key=self.obs.model_key,
            phase=RolloutPhase.PENDING,
            reason=Reason.NEW_REVISION,
            message="",
            steps_hash=steps_hash(self.spec),
            weight=0,
            candidate=None,
            revision_started_at=self.now,
            aborted_at=None,
            background_run=None,
        )
        self.restart_steps()
        self.hold = None
        self.event("Normal", Reason.NEW_REVISION, f"revision {revision}: rolling out {self.obs.model_key}")

    def _content_changed(self) -> bool:
        """The same spec.model now names another published model (a FederatedJob recreated and retrained)."""
        known = self.s.candidate or (self.s.stable if self.s.phase == RolloutPhase.HEALTHY else None)
        return known is not None and self.obs.candidate is not None and self.obs.candidate != known

    def follow_the_steps_spec(self) -> None:
        current = steps_hash(self.spec)
        if current == self.s.steps_hash:
            return
        self.set(steps_hash=current)
        if self.terminal or self.s.candidate is None:
            return  # nothing is stepping: a retry or the candidate starts at step 0 anyway
        self.restart_steps()
        self.hold = None if self.hold == "step" else self.hold
        self.event(
            "Normal",
            Reason.STEPS_CHANGED,
            f"spec.steps changed: starting them again at step 1 (the weight stays {self.s.weight}%)",
        )

    def resolve_the_candidate(self) -> None:
        if self.s.phase != RolloutPhase.PENDING or self.s.candidate is not None:
            return
        candidate = self.obs.candidate
        if candidate is None:
            if self.s.reason != Reason.WAITING_FOR_MODEL:
                self.set(reason=Reason.WAITING_FOR_MODEL, message=f"waiting for {self.s.model_key} to be published")
                self.event("Normal", Reason.WAITING_FOR_MODEL, self.s.message)
            return
        self.set(candidate=candidate, phase=RolloutPhase.PROGRESSING, reason=Reason.MODEL_AVAILABLE)
        self.restart_steps()
        if candidate == self.s.stable:
            self.complete(Reason.ALREADY_STABLE, f"{self.s.model_key} is already the stable version")
            return
        self.event("Normal", Reason.MODEL_AVAILABLE, f"candidate {candidate} from {self.s.model_key}")

    # --- users' actions ------------------------------------------------------------------------------------

    def carry_out_the_action(self) -> None:
        action = self.obs.action
        if action is None or self.obs.action_id == self.s.handled_action:
            return
        self.set(handled_action=self.obs.action_id)
        if self.s.phase == RolloutPhase.HEALTHY:
            self.ignore(action, "the rollout is complete: its version is the stable one")
        elif action == Action.ABORT:
            if self.s.phase == RolloutPhase.DEGRADED:
                self.ignore(action, "the rollout is aborted already")
            else:
                self.abort(Reason.ABORTED, f"aborted by a user at {self.where()}")
        elif action == Action.RETRY:
            self._retry()
        elif self.s.phase == RolloutPhase.DEGRADED:
            self.ignore(action, "the rollout is aborted: retry it, or change spec.model")
        elif self.s.candidate is None:
            self.ignore(action, f"waiting for {self.s.model_key} to be published")
        elif action == Action.PAUSE:
            self._pause()
        elif action == Action.RESUME:
            self._resume()
        elif action == Action.PROMOTE:
            self._promote()
        else:
            self.complete(Reason.PROMOTED_FULL, f"promoted in full by a user at {self.where()}")

    def _retry(self) -> None:
        if self.s.phase == RolloutPhase.DEGRADED:
            self.set(
                phase=RolloutPhase.PROGRESSING if self.s.candidate else RolloutPhase.PENDING,
                reason=Reason.RETRIED,
                message="",
                aborted_at=None,
                paused_by_user=False,  # retrying is asking it to go again
            )
            self.restart_steps()
            self.event("Normal", Reason.RETRIED, f"revision {self.s.revision} again from step 1")
        elif self.hold is not None:
            self._rerun_held("retried by a user")
        else:
            self.ignore(Action.RETRY, "only an aborted rollout or an inconclusive analysis can be retried")

    def _pause(self) -> None:
        if self.s.paused_by_user:
            self.ignore(Action.PAUSE, "the rollout is paused already")
            return
        self.set(paused_by_user=True)
        self.event("Normal", Reason.PAUSED_BY_USER, f"paused by a user at {self.where()}")

    def _resume(self) -> None:
        if not self.s.paused_by_user and self.hold is None:
            why = "waiting to be promoted" if self._waiting_for_promotion() else "the rollout is not paused"
            self.ignore(Action.RESUME, why)
            return
        self.set(paused_by_user=False, step_started_at=self.now)  # the step's clock starts again
        if self.hold is not None:
            self._rerun_held("resumed by a user")
        else:
            self.event("Normal", Reason.RESUMED, f"resumed by a user at {self.where()}")

    def _rerun_held(self, by: str) -> None:
        """Run the inconclusive analysis again: a new run, and the step's clock starts again."""
        what = "the background analysis" if self.hold == "background" else f"the analysis of {self.where()}"
        if self.hold == "background":
            self.set(background_run=self.new_run())
        else:
            self.set(step_run=self.new_run())
        self.set(step_started_at=self.now, phase=RolloutPhase.PROGRESSING)
        self.hold = None
        self.event("Normal", Reason.RETRIED, f"{by}: running {what} again")

    def _promote(self) -> None:
        skipped = self.current
        self.set(paused_by_user=False)
        if self.hold == "background":
            self.set(background_run=self.new_run())  # a person accepted it: the watch goes on afresh
        self.hold = None
        message = f"promoted by a user at {self.where()}"
        if skipped is not None and skipped.kind != "setWeight":
            message += f": {skipped.kind} step skipped"
            self.advance()
        self.set(phase=RolloutPhase.PROGRESSING)
        self.event("Normal", Reason.PROMOTED, message)

    def _waiting_for_promotion(self) -> bool:
        step = self.current
        return step is not None and step.pause is not None and step.pause.duration is None

    # --- analysis ------------------------------------------------------------------------------------------

    def _background_active(self) -> bool:
        return bool(self.spec.analysis.background) and not self.terminal and self.s.candidate is not None

    def watch_the_background(self) -> None:
        if not self._background_active():
            return
        if self.s.background_run is None:
            self.set(background_run=self.new_run())
            return
        result = self.obs.background_analysis
        if self.hold == "background" or result is None or result.run != self.s.background_run:
            return
        names = ", ".join(self.spec.analysis.background)
        if result.phase in _ABORTING:
            self.abort(_ABORTING[result.phase][1], f"background analysis {result.phase.lower()} ({names})")
        elif result.phase == RunPhase.INCONCLUSIVE:
            self._hold("background", f"background analysis inconclusive ({names}): promote to go on, or retry")
        elif result.phase == RunPhase.SUCCESSFUL:
            self.set(background_run=self.new_run())  # that run's measurements passed: keep watching

    def _hold(self, hold: Hold, message: str) -> None:
        reason = Reason.BACKGROUND_ANALYSIS_INCONCLUSIVE if hold == "background" else Reason.ANALYSIS_INCONCLUSIVE
        self.hold = hold
        self.set(phase=RolloutPhase.PAUSED, reason=reason, message=message)
        self.event("Warning", reason, f"{message} (no data never passes)")

    # --- the steps -----------------------------------------------------------------------------------------

    def step(self) -> None:
        """Go through the steps as far as they allow now: setWeight at once, pauses and analyses when done."""
        for _ in range(len(self.spec.steps) + 1):
            if self.terminal or self.s.candidate is None or self.hold is not None or self.s.paused_by_user:
                return
            step = self.current
            if step is None:
                self.complete(Reason.ROLLOUT_COMPLETED, "every step done")
                return
            if not self._take(step):
                return

    def _take(self, step: Step) -> bool:
        """Carry out the current step; True when it is done and the next one may start."""
        if step.set_weight is not None:
            weight = max(self.s.weight, step.set_weight)
            self.set(weight=weight)
            self.event("Normal", Reason.WEIGHT_SET, f"{self.where()}: weight {weight}%")
            self.advance()
            return True
        if step.pause is not None:
            if step.pause.duration is None:
                if self.fresh_step:
                    self.event("Normal", Reason.WAITING_FOR_PROMOTION, f"{self.where()}: paused until promoted")
                return False
            if self.s.step_started_at is None or self.now - self.s.step_started_at >= parse_duration(
                step.pause.duration
            ):
                self.advance()
                return True
            if self.fresh_step:
                self.event("Normal", Reason.TIMED_PAUSE, f"{self.where()}: pausing for {step.pause.duration}")
            return False
        assert step.analysis is not None
        metrics = ", ".join(step.analysis.metrics)
        if self.s.step_run is None:
            self.set(step_run=self.new_run())
            self.event("Normal", Reason.ANALYSIS_RUNNING, f"{self.where()}: analysing {metrics}")
            return False
        result = self.obs.step_analysis
        if result is None or result.run != self.s.step_run or result.phase == RunPhase.RUNNING:
            return False
        if result.phase == RunPhase.SUCCESSFUL:
            self.event("Normal", Reason.ANALYSIS_SUCCESSFUL, f"{self.where()}: {metrics} passed")
            self.advance()
            return True
        if result.phase in _ABORTING:
            self.abort(_ABORTING[result.phase][0], f"{self.where()}: analysis {result.phase.lower()} ({metrics})")
            return False
        self._hold("step", f"{self.where()}: analysis inconclusive ({metrics}): promote to skip it, or retry")
        return False

    def check_the_deadline(self) -> None:
        step = self.current
        if self.s.phase != RolloutPhase.PROGRESSING or self.hold is not None or self.s.paused_by_user:
            return
        if step is None or step.analysis is None or self.s.step_started_at is None:
            return
        result = self.obs.step_analysis
        if result is not None and result.run == self.s.step_run:
            return  # the run reports: it is measuring, however long it takes
        deadline = self.spec.progress_deadline_seconds
        if self.now - self.s.step_started_at > deadline:
            self.abort(
                Reason.PROGRESS_DEADLINE_EXCEEDED,
                f"{self.where()}: no analysis reported for {deadline}s (spec.progressDeadlineSeconds)",
            )

    # --- the outcome -------------------------------------------------------------------------------------

    def settle(self) -> None:
        """The phase, reason and message of a rollout that is neither done nor aborted nor held."""
        if self.terminal or self.hold is not None:
            return
        step = self.current
        if self.s.candidate is None:
            phase, reason, message = RolloutPhase.PENDING, self.s.reason, self.s.message
        elif self.s.paused_by_user:
            phase, reason = RolloutPhase.PAUSED, Reason.PAUSED_BY_USER
            message = f"{self.where()}: paused by a user; resume or promote to go on"
        elif step is not None and step.pause is not None and step.pause.duration is None:
            phase, reason = RolloutPhase.PAUSED, Reason.WAITING_FOR_PROMOTION
            message = f"{self.where()}: paused until promoted"
        elif step is not None and step.pause is not None:
            phase, reason = RolloutPhase.PROGRESSING, Reason.TIMED_PAUSE
            message = f"{self.where()}: pausing for {step.pause.duration}"
        elif step is not None and step.analysis is not None:
            phase, reason = RolloutPhase.PROGRESSING, Reason.ANALYSIS_RUNNING
            message = f"{self.where()}: analysing {', '.join(step.analysis.metrics)}"
        else:  # pragma: no cover - setWeight steps are carried out at once, and past the last step is Healthy
            phase, reason, message = RolloutPhase.PROGRESSING, self.s.reason, self.s.message
        self.set(phase=phase, reason=reason, message=message)

    def decision(self) -> Decision:
        self.settle()
        state = self.s
        run_step: tuple[str, ...] = ()
        step = self.current
        if not self.terminal and self.hold != "step" and state.step_run is not None and step is not None:
            run_step = step.analysis.metrics if step.analysis is not None else ()
        return Decision(
            state=state,
            events=tuple(self.events),
            reset_step_analysis=state.step_run != self.old.step_run,
            run_step_analysis=run_step,
            run_background=self._background_active() and self.hold != "background" and state.background_run is not None,
        )

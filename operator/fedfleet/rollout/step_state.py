"""The step machine's state: a frozen dataclass, kept in the rollout's status between reconciliations.

`StepState.from_status` reads it from the status model and `to_status` writes the status fields it owns
(camelCase, JSON-ready, for a merge patch). Times are epoch seconds here and RFC 3339 there; the machine
only records whole seconds, so the round trip changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedfleet.api.rollout_status import ModelRolloutStatus, RolloutPhase
from fedfleet.rollout.timestamps import epoch, rfc3339


@dataclass(frozen=True)
class StepState:
    """Where a rollout stands. The defaults are a rollout never reconciled: revision 0, nothing decided."""

    revision: int = 0  # counts the models rolled out by this resource; 0: none yet
    model_key: str | None = None  # what spec.model named when this revision started
    phase: RolloutPhase = RolloutPhase.PENDING
    reason: str = ""  # a RolloutReason: why the phase is what it is
    message: str = ""
    step_index: int = 0  # the current step; len(steps) once done
    steps_hash: str | None = None  # the spec.steps this revision is stepping through
    weight: int = 0  # percent of the selected devices on the candidate
    stable: str | None = None  # the digest every other device runs
    candidate: str | None = None  # the digest being rolled out; None until resolved and once stable
    salt: str | None = None  # keys the cohort buckets; chosen by the controller, carried here unchanged
    step_started_at: float | None = None  # when the current step started (or was resumed, or its analysis rerun)
    revision_started_at: float | None = None
    paused_by_user: bool = False
    aborted_at: float | None = None
    handled_action: str | None = None  # id of the last user action carried out (or refused)
    run_serial: int = 0  # the last analysis run id handed out; ids are never reused
    step_run: int | None = None  # the run gating the current analysis step
    background_run: int | None = None  # the current run of the background metrics

    @classmethod
    def from_status(cls, status: ModelRolloutStatus) -> StepState:
        return cls(
            revision=status.revision or 0,
            model_key=status.model_key,
            phase=status.phase or RolloutPhase.PENDING,
            reason=status.reason or "",
            message=status.message or "",
            step_index=status.step_index or 0,
            steps_hash=status.steps_hash,
            weight=status.weight or 0,
            stable=status.stable,
            candidate=status.candidate,
            salt=status.salt,
            step_started_at=epoch(status.step_started_at),
            revision_started_at=epoch(status.revision_started_at),
            paused_by_user=bool(status.paused_by_user),
            aborted_at=epoch(status.aborted_at),
            handled_action=status.handled_action,
            run_serial=status.run_serial or 0,
            step_run=status.step_run,
            background_run=status.background_run,
        )

    def to_status(self) -> dict[str, Any]:
        """The status fields this state owns, wire names, None for "absent" (a merge patch deletes them)."""
        return {
            "revision": self.revision,
            "modelKey": self.model_key,
            "phase": self.phase.value,
            "reason": self.reason or None,
            "message": self.message or None,
            "stepIndex": self.step_index,
            "stepsHash": self.steps_hash,
            "weight": self.weight,
            "stable": self.stable,
            "candidate": self.candidate,
            "salt": self.salt,
            "stepStartedAt": _time(self.step_started_at),
            "revisionStartedAt": _time(self.revision_started_at),
            "pausedByUser": self.paused_by_user,
            "abortedAt": _time(self.aborted_at),
            "handledAction": self.handled_action,
            "runSerial": self.run_serial,
            "stepRun": self.step_run,
            "backgroundRun": self.background_run,
        }


def _time(moment: float | None) -> str | None:
    return rfc3339(moment) if moment is not None else None

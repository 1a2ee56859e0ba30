"""The step machine's state and the rollout's status: every field survives the round trip, and an empty status
is a rollout never reconciled."""

from __future__ import annotations

from fedfleet.api.rollout_status import ModelRolloutStatus, RolloutPhase, RolloutReason
from fedfleet.rollout.step_state import StepState

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64

FULL = StepState(
    revision=3,
    model_key="federatedJob/mnist",
    phase=RolloutPhase.DEGRADED,
    reason=RolloutReason.ANALYSIS_FAILED,
    message="step 2/7: analysis failed (accuracy)",
    step_index=1,
    steps_hash="0123456789abcdef",
    weight=0,
    stable=A,
    candidate=B,
    salt="5e1f",
    step_started_at=1_800_000_000.0,
    revision_started_at=1_799_999_000.0,
    paused_by_user=True,
    aborted_at=1_800_000_030.0,
    handled_action="abort-7",
    run_serial=9,
    step_run=8,
    background_run=9,
)


def test_every_field_survives_the_status() -> None:
    wire = FULL.to_status()
    status = ModelRolloutStatus.model_validate(wire)
    assert StepState.from_status(status) == FULL
    # Written as the CRD names them, and only fields the status schema has.
    aliases = {field.alias for field in ModelRolloutStatus.model_fields.values()}
    assert set(wire) <= aliases
    assert wire["stepStartedAt"] == "2027-01-15T08:00:00Z" and wire["phase"] == "Degraded"


def test_an_empty_status_is_a_rollout_never_reconciled() -> None:
    assert StepState.from_status(ModelRolloutStatus()) == StepState()


def test_absent_values_are_written_as_null_so_a_merge_patch_removes_them() -> None:
    wire = StepState().to_status()
    assert wire["candidate"] is None and wire["abortedAt"] is None and wire["reason"] is None
    assert wire["revision"] == 0 and wire["pausedByUser"] is False


def test_a_time_that_is_not_rfc3339_reads_as_absent() -> None:
    status = ModelRolloutStatus.model_validate({"stepStartedAt": "yesterday", "abortedAt": "2027-01-15T08:00:00Z"})
    state = StepState.from_status(status)
    assert state.step_started_at is None and state.aborted_at == 1_800_000_000.0

"""A rollout's conditions: one Argo-style condition True per phase, kstatus' Ready / Reconciling / Stalled, the
generation on each, and transition times that move only when a condition's status does."""

from __future__ import annotations

import pytest

from fedfleet.api.rollout_status import RolloutPhase, RolloutReason
from fedfleet.api.status import Condition
from fedfleet.rollout.health import conditions_for
from fedfleet.rollout.step_state import StepState
from fedfleet.rollout.timestamps import rfc3339

T0 = 1_800_000_000.0
ARGO = ("Progressing", "Paused", "Degraded", "Healthy")


def _by_type(conditions: list[Condition]) -> dict[str, Condition]:
    return {condition.type: condition for condition in conditions}


def _true(conditions: list[Condition]) -> set[str]:
    return {condition.type for condition in conditions if condition.status == "True"}


@pytest.mark.parametrize(
    ("phase", "true", "kstatus"),
    [
        (RolloutPhase.PENDING, {"Progressing", "Reconciling"}, "InProgress"),
        (RolloutPhase.PROGRESSING, {"Progressing", "Reconciling"}, "InProgress"),
        (RolloutPhase.PAUSED, {"Paused"}, "Current"),
        (RolloutPhase.DEGRADED, {"Degraded", "Stalled"}, "Failed"),
        (RolloutPhase.HEALTHY, {"Healthy", "Ready"}, "Current"),
    ],
)
def test_each_phase_sets_one_argo_condition_and_the_kstatus_ones(
    phase: RolloutPhase, true: set[str], kstatus: str
) -> None:
    conditions = conditions_for(StepState(phase=phase, reason="Why", message="because"), generation=3, now=T0)
    assert [c.type for c in conditions] == [*ARGO, "Ready", "Reconciling", "Stalled"]
    assert _true(conditions) == true
    assert len(_true(conditions) & set(ARGO)) == 1
    assert _kstatus(conditions) == kstatus
    for condition in conditions:
        assert condition.observed_generation == 3 and condition.last_transition_time == rfc3339(T0)
        if condition.status == "True":
            assert (condition.reason, condition.message) == ("Why", "because")
        else:
            assert (condition.reason, condition.message) == (phase.value, "")


def _kstatus(conditions: list[Condition]) -> str:
    """kstatus' computation for a custom resource whose observedGeneration is current (sigs.k8s.io/cli-utils,
    pkg/kstatus/status: checkGenericProperties, then Compute's "absence of known conditions is Current")."""
    by_type = _by_type(conditions)
    if by_type["Reconciling"].status == "True":
        return "InProgress"
    if by_type["Stalled"].status == "True":
        return "Failed"
    return "Current"


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    progressing = StepState(phase=RolloutPhase.PROGRESSING, reason=RolloutReason.WEIGHT_SET)
    first = conditions_for(progressing, generation=1, now=T0)
    # Later, another reason and generation but the same statuses: the times stay.
    later = conditions_for(
        StepState(phase=RolloutPhase.PROGRESSING, reason=RolloutReason.ANALYSIS_RUNNING), 2, T0 + 60, first
    )
    assert all(c.last_transition_time == rfc3339(T0) for c in later)
    assert _by_type(later)["Progressing"].reason == "AnalysisRunning" and later[0].observed_generation == 2
    # Paused: the conditions whose status changed move, the others keep their time.
    paused = conditions_for(StepState(phase=RolloutPhase.PAUSED, reason="PausedByUser"), 2, T0 + 120, later)
    moved = {c.type for c in paused if c.last_transition_time == rfc3339(T0 + 120)}
    assert moved == {"Progressing", "Paused", "Reconciling"}


def test_conditions_another_writer_added_are_kept_last() -> None:
    foreign = Condition(type="ReleaseSigned", status="True", reason="Signed", last_transition_time=rfc3339(T0))
    conditions = conditions_for(StepState(phase=RolloutPhase.HEALTHY), 1, T0, [foreign])
    assert conditions[-1] == foreign and len(conditions) == 8


def test_a_state_without_a_reason_gives_its_phase() -> None:
    conditions = conditions_for(StepState(phase=RolloutPhase.HEALTHY), 1, T0)
    assert _by_type(conditions)["Healthy"].reason == "Healthy"

"""The run phases the step machine reads are the ones the status records."""

from __future__ import annotations

from fedfleet.api.rollout_status import AnalysisRunPhase
from fedfleet.rollout.analysis import RunPhase


def test_run_phases_and_status_phases_are_the_same_names() -> None:
    assert [phase.value for phase in RunPhase] == [phase.value for phase in AnalysisRunPhase]
    assert RunPhase.INCONCLUSIVE == AnalysisRunPhase.INCONCLUSIVE == "Inconclusive"

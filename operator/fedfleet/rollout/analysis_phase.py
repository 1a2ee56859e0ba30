"""The phase of an analysis run, as the step machine reads it.

A stand-in until `fedfleet.rollout.analysis` (which computes run phases from measurements) defines `RunPhase`
itself; then this module re-exports that one. The names are the status's (`AnalysisRunPhase`).
"""

from __future__ import annotations

from enum import StrEnum


class RunPhase(StrEnum):
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"

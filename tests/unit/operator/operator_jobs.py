"""Builders for the operator's unit tests: a FederatedJob body as the API server would store it."""

from __future__ import annotations

import copy
from typing import Any

from fedfleet.operator.job import JobRef

SPEC: dict[str, Any] = {
    "rounds": 3,
    "seed": 1,
    "model": {"architecture": "logistic"},
    "cohort": {"clientsPerRound": 3, "minReports": 2, "roundDeadlineSeconds": 20},
    "simulation": {"devices": 4, "dataset": "digits", "testSamples": 200},
}


def job_body(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    generation: int = 1,
    name: str = "digits",
    namespace: str = "team-a",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "fedfleet.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": name, "namespace": namespace, "uid": "0f1e2d3c-uid", "generation": generation},
        "spec": copy.deepcopy(SPEC if spec is None else spec),
    }
    if status is not None:
        body["status"] = status
    return body


def job_ref(**kwargs: Any) -> JobRef:
    return JobRef.from_body(job_body(**kwargs))

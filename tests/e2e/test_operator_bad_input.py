"""Bad input on a real API server, with the operator and real aggregator processes.

What the spec's rules can judge is refused at `kubectl apply`, naming the field. What only the aggregator can
judge when it starts (here: a targetEpsilon that no noise multiplier reaches) makes it exit 2 with a one-line
reason in its container's termination message; the operator reads that back from the pod's status and fails
the job with it (reason InvalidSpec, a Warning Event) instead of letting the pod restart until
activeDeadlineSeconds.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from e2e_support import KubeApi, cluster, wait_for
from operator_support import (
    aggregator_pods,
    apply,
    condition,
    example_job,
    get_job,
    is_true,
    new_namespace,
)

pytestmark = pytest.mark.e2e

#: Central DP with an ε no noise multiplier up to 10⁴ reaches in the example's 3 rounds at q = 4/6: only the
#: aggregator, planning the job's noise, finds that out (the spec's rules cannot).
UNREACHABLE = {"differentialPrivacy": {"mode": "central", "targetEpsilon": 0.0001}}
#: From apply to Failed: the pod's init step, the aggregator's start (imports, data, noise planning), the
#: operator's reaction. The example's activeDeadlineSeconds (900) is far beyond it.
FAILED_WITHIN = 60.0


@pytest.fixture(scope="module")
def bad_input_namespace(kube: KubeApi, operator_release: dict[str, Any]) -> str:
    return new_namespace(kube, "e2e-bad-input")


def _restarts(kube: KubeApi, ns: str, job: str) -> int:
    """The most restarts any aggregator container of the job shows now."""
    counts = [
        int(status.get("restartCount", 0))
        for pod in aggregator_pods(kube, ns, job)
        for status in pod.get("status", {}).get("containerStatuses", [])
    ]
    return max(counts, default=0)


def test_test_samples_beyond_the_dataset_are_refused_at_apply(
    control_plane: cluster.ControlPlane, bad_input_namespace: str
) -> None:
    manifest = example_job("too-many-tests")
    manifest["spec"]["simulation"]["testSamples"] = 1797  # all of digits: nothing left to train on
    done = apply(control_plane, bad_input_namespace, manifest)
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert "spec.simulation.testSamples: Invalid value" in done.stderr, done.stderr
    assert "simulation.testSamples: must be smaller than the size of simulation.dataset" in done.stderr


def test_input_only_the_aggregator_can_judge_fails_the_job_with_its_message(
    control_plane: cluster.ControlPlane, kube: KubeApi, bad_input_namespace: str
) -> None:
    ns, job = bad_input_namespace, "unreachable-epsilon"
    assert example_job(job)["spec"]["activeDeadlineSeconds"] > 10 * FAILED_WITHIN
    applied = apply(control_plane, ns, example_job(job, privacy=UNREACHABLE))
    assert applied.returncode == 0, applied.stderr  # the API server cannot know: the job is accepted

    most_restarts = 0

    def failed() -> dict[str, Any] | None:
        nonlocal most_restarts
        most_restarts = max(most_restarts, _restarts(kube, ns, job))
        body = get_job(kube, ns, job)
        return body if is_true(body, "Failed") else None

    body = wait_for(f"job {ns}/{job} Failed", failed, timeout=FAILED_WITHIN, interval=0.2)
    reason = condition(body, "Failed")
    assert reason is not None and reason["reason"] == "InvalidSpec", reason
    # The aggregator's own line, through the termination message: the field and the rule, no traceback.
    assert (
        "the aggregator refused its input: privacy.differentialPrivacy.targetEpsilon: cannot be reached"
        in (reason["message"])
    ), reason
    assert "Traceback" not in reason["message"]
    assert body["status"]["phase"] == "Failed" and not is_true(body, "Complete")
    assert is_true(body, "Stalled")  # how kstatus (Flux) reads a job that can never work

    events = kube.get(f"/api/v1/namespaces/{ns}/events", fieldSelector=f"involvedObject.name={job}")["items"]
    warnings = [e for e in events if e["type"] == "Warning" and e["reason"] == "InvalidSpec"]
    assert warnings and "privacy.differentialPrivacy.targetEpsilon" in warnings[0]["message"], events

    # No restart loop: the operator deletes the pod on the first exit 2, and a failed job is never started
    # again. The node agent restarts a container 1 s after it exits, so on a busy machine a restart may slip in
    # before the operator reacts; a loop would go on restarting until the deadline.
    wait_for("the aggregator pod deleted", lambda: not aggregator_pods(kube, ns, job), timeout=30)
    assert most_restarts <= 2, f"the aggregator restarted {most_restarts} times"
    time.sleep(3)  # several resyncs later (resyncSeconds=1)
    assert not aggregator_pods(kube, ns, job)
    later = get_job(kube, ns, job)
    assert is_true(later, "Failed") and condition(later, "Failed") == reason

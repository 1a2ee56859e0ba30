"""The operator on a real API server: helm-installed, driving real aggregator processes and a real fleet.

(1) apply → aggregator runs → a simulated fleet connects to the endpoint from the status → Complete, with
accuracy in the status and the printer columns in `kubectl get`; (3) the operator SIGKILLed mid-job, and the
aggregator pod deleted mid-job; (4) deleting a job removes its children.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e_support import KubeApi, NodeAgent, cluster, wait_for
from operator_support import (
    EXAMPLE,
    aggregator_pods,
    apply,
    cmdline,
    condition,
    example_job,
    fleet,
    get_job,
    gone,
    is_true,
    job_files,
    kubectl,
    new_namespace,
    pid_of,
    process_alive,
    running_pod,
    start_slowed_job,
    wait_job,
)

pytestmark = pytest.mark.e2e

CHILDREN = [
    "/api/v1/namespaces/{ns}/pods/{job}-aggregator",
    "/api/v1/namespaces/{ns}/services/{job}-aggregator",
    "/api/v1/namespaces/{ns}/configmaps/{job}-aggregator",
    "/api/v1/namespaces/{ns}/secrets/{job}-credentials",
    "/api/v1/namespaces/{ns}/serviceaccounts/{job}-aggregator",
    "/api/v1/namespaces/{ns}/persistentvolumeclaims/{job}-state",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{job}-aggregator",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{job}-aggregator",
]


def _table(text: str) -> list[dict[str, str]]:
    """kubectl's table as rows of column -> cell, cut at the header's column starts (cells may be empty)."""
    header, *lines = text.rstrip().splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)} for line in lines
    ]


def _events(kube: KubeApi, ns: str, job: str) -> list[str]:
    items = kube.get(f"/api/v1/namespaces/{ns}/events", fieldSelector=f"involvedObject.name={job}")["items"]
    return [e["reason"] for e in items]


def _round(kube: KubeApi, ns: str, job: str) -> int:
    return int(get_job(kube, ns, job).get("status", {}).get("round", 0))


def test_apply_runs_a_job_to_completion_with_a_simulated_fleet(
    control_plane: cluster.ControlPlane,
    kube: KubeApi,
    node_agent: NodeAgent,
    operator_release: dict[str, Any],
    tmp_path: Path,
) -> None:
    ns = new_namespace(kube, "e2e-complete")
    applied = kubectl(control_plane, "apply", "-n", ns, "-f", str(EXAMPLE))
    assert applied.returncode == 0, applied.stderr
    job = "digits-fedavg"

    # The aggregator runs as a real process, with the job's configuration.
    pod = running_pod(kube, ns, job)
    pid = wait_for("the aggregator process", lambda: pid_of(node_agent, pod, "aggregator"))
    assert process_alive(pid)
    assert "aggregator --config etc/fedfleet/run/aggregator.yaml" in " ".join(cmdline(pid))
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FederatedJob", job, True)

    ready = wait_job(kube, ns, job, "Ready", timeout=90)
    endpoint = ready["status"]["endpoint"]
    assert endpoint == f"{running_pod(kube, ns, job)['status']['podIP']}:50051"
    assert ready["status"]["observedGeneration"] == ready["metadata"]["generation"]

    files = job_files(kube, ns, job, tmp_path / "device")
    with fleet(endpoint, files, tmp_path / "fleet.log") as devices:
        done = wait_job(kube, ns, job, "Complete", timeout=180)
        assert devices.wait(timeout=60) == 0, (tmp_path / "fleet.log").read_text()[-2000:]
    status = done["status"]
    assert status["round"] == 3 and status["phase"] == "Complete"
    assert 0.5 < status["accuracy"] <= 1.0, status
    assert status["participants"] >= 3
    complete = condition(done, "Complete")
    assert complete is not None and complete["reason"] == "RoundsCompleted"
    assert not any(c["status"] == "True" for c in status["conditions"] if c["type"] in ("Failed", "Stalled"))

    listed = kubectl(control_plane, "get", "federatedjobs", "-n", ns)
    (row,) = _table(listed.stdout)
    assert list(row) == ["NAME", "ROUND", "TARGET", "PARTICIPANTS", "EPSILON", "ACCURACY", "READY", "AGE"], (
        listed.stdout
    )
    assert (row["NAME"], row["ROUND"], row["TARGET"], row["READY"]) == (job, "3", "3", "True"), listed.stdout
    assert float(row["ACCURACY"]) == pytest.approx(status["accuracy"], abs=1e-3)
    assert int(row["PARTICIPANTS"]) == status["participants"]
    wide = kubectl(control_plane, "get", "fj", "-n", ns, "-o", "wide")
    (wide_row,) = _table(wide.stdout)
    assert list(wide_row)[-6:] == ["PHASE", "STRATEGY", "DEVICES", "DROPPED", "CHURN", "ENDPOINT"], wide.stdout
    assert (wide_row["PHASE"], wide_row["STRATEGY"], wide_row["DEVICES"]) == ("Complete", "fedavg", "6"), wide.stdout

    reasons = _events(kube, ns, job)
    for reason in ("Created", "AggregatorRunning", "Completed"):
        assert reason in reasons, reasons

    # The operator's own metrics know the job too (labels: namespace and name only).
    operator = operator_release["find_pod"]()
    with urllib.request.urlopen(f"http://{operator['status']['podIP']}:8080/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert f'fedfleet_job_round{{name="{job}",namespace="{ns}"}} 3.0' in metrics
    assert 'fedfleet_operator_reconciliations_total{outcome="success"}' in metrics


def test_operator_killed_mid_job_comes_back_without_duplicating_the_aggregator(
    kube: KubeApi, node_agent: NodeAgent, control_plane: cluster.ControlPlane, operator_release: dict[str, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    ns = new_namespace(kube, "e2e-opkill")
    job = "sturdy"
    endpoint = start_slowed_job(kube, control_plane, ns, job, rounds=6)
    aggregator_uid = running_pod(kube, ns, job)["metadata"]["uid"]
    with fleet(endpoint, job_files(kube, ns, job, tmp_path / "device"), tmp_path / "fleet.log") as devices:
        wait_for("round 1 done", lambda: _round(kube, ns, job) >= 1, timeout=90)
        operator = operator_release["find_pod"]()
        old_pid = pid_of(node_agent, operator, "operator")
        os.kill(old_pid, signal.SIGKILL)  # no shutdown of any kind: the process just vanishes
        assert _round(kube, ns, job) < 6, "the job ended before the operator was killed"

        def restarted() -> bool:
            pod = kube.get(
                f"/api/v1/namespaces/{operator['metadata']['namespace']}/pods/{operator['metadata']['name']}"
            )
            statuses = pod["status"].get("containerStatuses", [])
            return bool(statuses) and statuses[0]["restartCount"] >= 1 and statuses[0]["ready"]

        wait_for("the operator restarted and ready", restarted, timeout=60)
        assert pid_of(node_agent, operator, "operator") != old_pid
        done = wait_job(kube, ns, job, "Complete", timeout=180)
        assert devices.wait(timeout=60) == 0
    assert done["status"]["round"] == 6
    pods = kube.get(f"/api/v1/namespaces/{ns}/pods")["items"]
    assert [p["metadata"]["uid"] for p in pods] == [aggregator_uid]  # exactly one, never recreated
    for kind in ("services", "configmaps"):
        items = kube.get(f"/api/v1/namespaces/{ns}/{kind}")["items"]
        assert len([i for i in items if i["metadata"]["name"].startswith(job)]) == 1, kind


def test_deleted_aggregator_pod_comes_back_and_resumes_from_its_checkpoint(
    kube: KubeApi, node_agent: NodeAgent, control_plane: cluster.ControlPlane, operator_release: dict[str, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    ns = new_namespace(kube, "e2e-podkill")
    job = "phoenix"
    endpoint = start_slowed_job(kube, control_plane, ns, job, rounds=6)
    first = running_pod(kube, ns, job)
    files = job_files(kube, ns, job, tmp_path / "device")
    with fleet(endpoint, files, tmp_path / "fleet1.log"):
        wait_for("round 2 done", lambda: _round(kube, ns, job) >= 2, timeout=90)
        before = _round(kube, ns, job)
        assert before < 6
        deleted = kubectl(control_plane, "delete", "pod", "-n", ns, f"{job}-aggregator", "--wait=true")
        assert deleted.returncode == 0, deleted.stderr
    second = running_pod(kube, ns, job, timeout=60, not_uid=first["metadata"]["uid"])
    endpoint = wait_job(kube, ns, job, "Ready", timeout=90)["status"]["endpoint"]
    log = node_agent.pod_dir(second["metadata"]["uid"]) / "logs" / "aggregator.log"
    found = wait_for(
        "the new aggregator resuming", lambda: re.search(r"resuming \S+ after round (\d+)", log.read_text()), timeout=60
    )
    checkpointed = int(found.group(1))
    assert checkpointed >= before  # it picked up where the checkpoint was, not from round 0
    with fleet(endpoint, files, tmp_path / "fleet2.log") as devices:
        done = wait_job(kube, ns, job, "Complete", timeout=180)
        assert devices.wait(timeout=60) == 0, (tmp_path / "fleet2.log").read_text()[-2000:]
    assert done["status"]["round"] == 6
    assert "AggregatorRecreated" in _events(kube, ns, job)
    assert len(aggregator_pods(kube, ns, job)) == 1


def test_deleting_a_job_removes_its_children_and_stops_the_aggregator(
    kube: KubeApi, node_agent: NodeAgent, control_plane: cluster.ControlPlane, operator_release: dict[str, Any]
) -> None:
    ns = new_namespace(kube, "e2e-delete")
    job = "short-lived"
    assert apply(control_plane, ns, example_job(job)).returncode == 0
    pod = running_pod(kube, ns, job)
    pid = wait_for("the aggregator process", lambda: pid_of(node_agent, pod, "aggregator"))
    paths = [p.format(ns=ns, job=job) for p in CHILDREN]
    wait_for("every child", lambda: all(not gone(kube, p) for p in paths), timeout=30)

    deleted = kubectl(control_plane, "delete", "federatedjob", "-n", ns, job, "--wait=true", "--timeout=60s")
    assert deleted.returncode == 0, deleted.stderr
    for path in paths:
        wait_for(f"{path} deleted by garbage collection", lambda p=path: gone(kube, p), timeout=90)  # type: ignore[misc]
    wait_for("the aggregator process stopped", lambda: not process_alive(pid), timeout=30)


def test_suspend_stops_the_aggregator_and_resume_continues_from_the_checkpoint(
    kube: KubeApi, node_agent: NodeAgent, control_plane: cluster.ControlPlane, operator_release: dict[str, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    ns = new_namespace(kube, "e2e-suspend")
    job = "nap"
    endpoint = start_slowed_job(kube, control_plane, ns, job, rounds=5)
    files = job_files(kube, ns, job, tmp_path / "device")
    with fleet(endpoint, files, tmp_path / "fleet1.log"):
        wait_for("round 1 done", lambda: _round(kube, ns, job) >= 1, timeout=90)
        suspended = kubectl(
            control_plane, "patch", "fj", job, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
        )
        assert suspended.returncode == 0, suspended.stderr
        wait_for("the aggregator pod gone", lambda: not aggregator_pods(kube, ns, job), timeout=60)
    status = get_job(kube, ns, job)["status"]
    assert status["phase"] == "Suspended" and "endpoint" not in status and "startTime" not in status
    assert condition(get_job(kube, ns, job), "Running")["reason"] == "Suspended"  # type: ignore[index]
    stopped_at = _round(kube, ns, job)
    assert 1 <= stopped_at < 5

    resumed = kubectl(control_plane, "patch", "fj", job, "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    assert resumed.returncode == 0, resumed.stderr
    pod = running_pod(kube, ns, job, timeout=60)
    endpoint = wait_job(kube, ns, job, "Ready", timeout=90)["status"]["endpoint"]
    log = node_agent.pod_dir(pod["metadata"]["uid"]) / "logs" / "aggregator.log"
    found = wait_for("resuming", lambda: re.search(r"resuming \S+ after round (\d+)", log.read_text()), timeout=60)
    assert int(found.group(1)) >= stopped_at
    with fleet(endpoint, files, tmp_path / "fleet2.log") as devices:
        done = wait_job(kube, ns, job, "Complete", timeout=180)
        assert devices.wait(timeout=60) == 0
    assert done["status"]["round"] == 5
    reasons = _events(kube, ns, job)
    assert "Suspended" in reasons and "Resumed" in reasons


def test_active_deadline_fails_the_job_and_stops_its_aggregator(
    kube: KubeApi, node_agent: NodeAgent, control_plane: cluster.ControlPlane, operator_release: dict[str, Any]
) -> None:
    ns = new_namespace(kube, "e2e-deadline")
    job = "hurry"
    assert apply(control_plane, ns, example_job(job, activeDeadlineSeconds=3)).returncode == 0
    pod = running_pod(kube, ns, job)
    pid = wait_for("the aggregator process", lambda: pid_of(node_agent, pod, "aggregator"))
    failed = wait_job(kube, ns, job, "Failed", timeout=60)  # no fleet ever connects
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]
    assert failed["status"]["phase"] == "Failed" and not is_true(failed, "Complete")
    wait_for("the aggregator pod deleted", lambda: not aggregator_pods(kube, ns, job), timeout=60)
    wait_for("the aggregator process stopped", lambda: not process_alive(pid), timeout=30)
    assert "DeadlineExceeded" in _events(kube, ns, job)
    time.sleep(3)  # several resyncs later: a failed job is not started again
    assert not aggregator_pods(kube, ns, job) and is_true(get_job(kube, ns, job), "Failed")


def test_a_secure_job_with_distributed_dp_completes_in_the_cluster(
    control_plane: cluster.ControlPlane, kube: KubeApi, operator_release: dict[str, Any], tmp_path: Path
) -> None:
    """The aggregator pod runs secure aggregation with the device-sim fleet: the four stages over the pod
    network, Skellam noise added on the devices, ε reported in the status."""
    ns = new_namespace(kube, "e2e-secure")
    job = "digits-secure"
    privacy = {
        "secureAggregation": {"enabled": True},
        "differentialPrivacy": {"mode": "distributed", "noiseMultiplier": 0.8, "clipNorm": 2.0},
    }
    applied = apply(control_plane, ns, example_job(job, privacy=privacy))
    assert applied.returncode == 0, applied.stderr
    endpoint = wait_job(kube, ns, job, "Ready", timeout=90)["status"]["endpoint"]
    files = job_files(kube, ns, job, tmp_path / "device")
    with fleet(endpoint, files, tmp_path / "fleet.log") as devices:
        done = wait_job(kube, ns, job, "Complete", timeout=180)
        assert devices.wait(timeout=60) == 0, (tmp_path / "fleet.log").read_text()[-2000:]
    status = done["status"]
    assert status["round"] == 3 and status["participants"] >= 3, status
    assert status["epsilonSpent"] > 0, status
    complete = condition(done, "Complete")
    assert complete is not None and complete["reason"] == "RoundsCompleted"

"""ModelRollout on the real control plane, with the real Prometheus and the chart's gateway pod.

One fleet of simulated devices (the real device SDK over gRPC and TLS, with fleet tokens) follows the
`default` fleet through three rollouts, and every count of who runs what is asked of the devices:
(a) a FederatedJob completes → a ModelRollout of its model steps 1 → 5 → 25 → 100 with Prometheus analysis
    → Healthy; at each step the share of devices running the candidate is the weight, and a device that ran
    the candidate never goes back; `kubectl wait --for=condition=Healthy`, printer columns; re-applying the
    same manifest changes nothing;
(b) a deliberately degraded copy fails its first analysis → aborted: connected devices back on the stable
    version within seconds, devices offline during the abort come back on it, the bad version never beyond
    the first step;
(c) devices that report nothing: the analysis is inconclusive → Paused, never promoted; `kubectl fedfleet
    abort` sends every device back;
(d) an artifact tampered with on the gateway's volume: devices refuse to run it and report why, the gate sees
    the activation failures and aborts;
(e, f, g) a rollout held at `pause: {}`: the operator SIGKILLed and the gateway pod deleted mid-rollout (the same
    step, the weight never backwards, no device flips); `spec.model` changed → a new revision from step 0;
    `kubectl fedfleet status/promote/pause/resume/abort/retry/promote --full`, with an Event for each.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_support import KubeApi, NodeAgent, cluster, wait_for
from operator_support import (
    GATEWAY,
    GATEWAY_GRPC_PORT,
    OPERATOR_NAMESPACE,
    apply,
    example_job,
    fleet,
    gateway_ip,
    get_job,
    job_files,
    kubectl,
    new_namespace,
    pid_of,
    running_pod,
    wait_job,
)
from rollout_e2e_support import (
    FleetRunner,
    accuracy_metric,
    activation_failures_metric,
    rollout_manifest,
    rollout_status,
)

from fedfleet.models.artifact import ModelArtifact, decode, digest_of, encode
from fedfleet.proto.fleet_admin import publish_model
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from fedfleet.security.tokens import fleet_identity, issue_token

pytestmark = pytest.mark.e2e

# At the 1 % step 800 devices put ~8 in the canary: the chance that none is there to report is 0.03 %.
DEVICES = 800
JSON = dict[str, Any]


def _secret(kube: KubeApi, name: str, key: str) -> bytes:
    data = kube.get(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets/{name}")["data"]
    return base64.b64decode(data[key])


def _share_bound(weight: float, devices: int) -> float:
    """How far (points) the share may sit from the weight: the issue's ±2, or 3 standard deviations of the
    binomial share when that is wider (hashed cohorts are random: 25 % of 500 devices has σ ≈ 1.9 points)."""
    p = weight / 100
    return max(2.0, 300 * math.sqrt(p * (1 - p) / devices))


def _degraded(data: bytes) -> bytes:
    """The model with its weights drowned in noise: a candidate that must never pass an analysis."""
    return _with_noise(data, seed=5, scale=5.0, floor=1.0)


def _nudged(data: bytes, seed: int) -> bytes:
    """The model with a trace of noise: another version (another digest), as accurate as the stable one."""
    return _with_noise(data, seed=seed, scale=1e-4, floor=0.0)


def _with_noise(data: bytes, *, seed: int, scale: float, floor: float) -> bytes:
    artifact = decode(data)
    rng = np.random.default_rng(seed)
    std = scale * float(np.std(artifact.weights)) + floor
    noisy = artifact.weights + rng.normal(0, std, artifact.weights.shape)
    return encode(ModelArtifact(artifact.header, noisy.astype(np.float32)))


def _tamper_on_the_gateway_volume(agent: NodeAgent, digest: str) -> None:
    """Flip one byte of the stored artifact's weights where the gateway keeps it (the node agent's directory
    for the gateway's data volume): the gateway serves the bytes as stored, only devices check them."""
    name = digest.removeprefix("sha256:")
    found = [p for p in agent.state_dir.rglob(name) if p.parent.name == "sha256" and p.is_file()]
    assert len(found) == 1, f"the stored artifact {digest}: {found}"
    blob = bytearray(found[0].read_bytes())
    blob[-5] ^= 0xFF
    found[0].write_bytes(bytes(blob))


def _plugin(control_plane: cluster.ControlPlane, ns: str, *args: str) -> str:
    """`kubectl fedfleet ARGS` in the namespace; its output, after asserting it succeeded."""
    done = kubectl(control_plane, "fedfleet", "-n", ns, *args, with_plugins=True)
    assert done.returncode == 0, f"kubectl fedfleet {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _event_reasons(kube: KubeApi, ns: str, name: str) -> set[str]:
    events = kube.get(f"/api/v1/namespaces/{ns}/events", fieldSelector=f"involvedObject.name={name}")
    return {e["reason"] for e in events["items"]}


def _download(target: str, ca: bytes, token_key: bytes, digest: str) -> bytes:
    import grpc

    async def fetch() -> bytes:
        token = issue_token(token_key, fleet_identity("default"), "e2e-tester", 600)
        async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
            stream = rpc.FleetStub(channel).DownloadArtifact(
                pb.DownloadArtifactRequest(digest=digest, offset=0),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=60,
            )
            return b"".join([chunk.data async for chunk in stream])

    return asyncio.run(fetch())


class Follower:
    """Polls the rollout and the devices together: per weight, the share of online devices on the candidate;
    per device, whether it ever went from the candidate back to something else."""

    def __init__(self, kube: KubeApi, ns: str, name: str, devices: FleetRunner, candidate: str | None = None) -> None:
        self.kube, self.ns, self.name, self.devices = kube, ns, name, devices
        self.candidate = candidate
        self.max_weight = 0
        self.shares: dict[int, list[float]] = {}
        self.ran_candidate: set[str] = set()
        self.went_back: set[str] = set()

    def poll(self) -> JSON:
        status = rollout_status(self.kube, self.ns, self.name)
        seen = (status.get("phase"), status.get("reason"), status.get("stepIndex"), status.get("weight"))
        if seen != getattr(self, "_last", None):
            self._last = seen
            runs = [(r.get("metric"), r.get("phase"), (r.get("measurements") or [{}])[-1].get("message"))
                    for r in status.get("analysisRuns", [])]  # fmt: skip
            print(f"{time.strftime('%H:%M:%S')} {self.name}: {seen} {status.get('message', '')!r} {runs}", flush=True)
        candidate = status.get("candidate") or self.candidate
        running = self.devices.running()
        online = self.devices.online()
        if candidate:
            self.candidate = candidate
            on = {d for d, v in running.items() if v == candidate}
            if status.get("phase") != "Degraded":
                self.went_back |= self.ran_candidate - on - (set(running) - online)
            self.ran_candidate |= on
            weight = int(status.get("weight") or 0)
            self.max_weight = max(self.max_weight, weight)
            if status.get("reason") == "AnalysisRunning" and online:
                self.shares.setdefault(weight, []).append(len(on & online) / len(online) * 100)
        return status

    def until(self, what: str, check: Any, timeout: float) -> JSON:
        deadline = time.monotonic() + timeout
        while True:
            status = self.poll()
            if check(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {status}")
            time.sleep(0.5)


@pytest.mark.timeout(1800)
def test_rollouts_of_a_trained_model_then_bad_silent_tampered_and_steered_ones(
    control_plane: cluster.ControlPlane,
    kube: KubeApi,
    node_agent: NodeAgent,
    operator_release: dict[str, Any],
    prometheus: str,
    tmp_path: Path,
) -> None:
    ip = gateway_ip(node_agent.pod_cidr)
    target = f"{ip}:{GATEWAY_GRPC_PORT}"
    ca = _secret(kube, f"{GATEWAY}-tls", "ca.crt")
    token_key = bytes.fromhex(_secret(kube, f"{GATEWAY}-token-key", "token.key").decode().strip())
    admin = _secret(kube, f"{GATEWAY}-admin", "admin.token").decode().strip()

    # --- a job trains the model -------------------------------------------------------------------------------
    ns = new_namespace(kube, "e2e-rollout")
    job = "digits-fedavg"
    assert apply(control_plane, ns, example_job(job)).returncode == 0
    running_pod(kube, ns, job)
    endpoint = wait_job(kube, ns, job, "Ready", timeout=90)["status"]["endpoint"]
    with fleet(endpoint, job_files(kube, ns, job, tmp_path / "trainers"), tmp_path / "trainers.log") as trainers:
        wait_job(kube, ns, job, "Complete", timeout=180)
        assert trainers.wait(timeout=60) == 0
    model = wait_for("status.model", lambda: get_job(kube, ns, job).get("status", {}).get("model"), timeout=120)
    good = model["digest"]

    # --- (a) the trained model, 1 → 5 → 25 → 100 ----------------------------------------------------------------
    ready = "fedfleet-fleet-default"

    def trusted_keys() -> list[str] | None:
        found = kube.get(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/configmaps/{ready}")
        return found["data"].get("trusted-keys", "").split() or None

    # Each raise is followed by a pause long enough for the devices to follow it on this busy machine, then an
    # analysis: the shares are read while it measures, once the fleet has converged on the weight.
    steps: list[JSON] = []
    for weight in (1, 5, 25):
        steps += [{"setWeight": weight}, {"pause": {"duration": "20s"}}, {"analysis": {"metrics": ["accuracy"]}}]
    steps.append({"setWeight": 100})
    metric = accuracy_metric("result >= 0.5", minReportingDevices=1, count=2, interval="5s")
    first = rollout_manifest("digits", {"federatedJob": job}, steps, [metric])
    assert apply(control_plane, ns, first).returncode == 0
    keys = wait_for("the fleet's trusted keys", trusted_keys, timeout=60)
    devices = FleetRunner(
        target,
        token_key=token_key,
        ca_pem=ca,
        trusted_keys=keys,
        devices=DEVICES,
        seed=3,
        dataset="digits",
        report_every_seconds=10.0,
    )
    try:
        follow = Follower(kube, ns, "digits", devices, good)
        follow.until("Healthy", lambda s: s.get("phase") == "Healthy", timeout=600)
        for weight in (1, 5, 25):
            assert follow.shares.get(weight), f"no observation at weight {weight}: {follow.shares}"
            bound = _share_bound(weight, DEVICES)
            worst = max(abs(share - weight) for share in follow.shares[weight][-3:])
            assert worst <= bound, (weight, follow.shares[weight][-3:], bound)
        assert not follow.went_back, f"{len(follow.went_back)} devices left the candidate mid-rollout"
        wait_for("every online device on the new stable version", lambda: set(devices.versions(True)) == {good}, 60)
        waited = kubectl(control_plane, "wait", "-n", ns, "--for=condition=Healthy", "modelrollout/digits",
                         "--timeout=10s")  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        table = kubectl(control_plane, "get", "modelrollouts", "-n", ns).stdout
        assert (
            "STEP" in table and "WEIGHT" in table and "Healthy" in table and good.removeprefix("sha256:")[:8] in table
        )
        before = rollout_status(kube, ns, "digits")
        assert apply(control_plane, ns, first).returncode == 0  # the same manifest again: nothing changes
        time.sleep(5)
        after = rollout_status(kube, ns, "digits")
        assert (after["revision"], after["weight"], after["phase"]) == (before["revision"], 100, "Healthy")

        # --- (b) a degraded copy: aborted at its first analysis --------------------------------------------------
        bad_bytes = _degraded(_download(target, ca, token_key, good))
        bad = publish_model(target, ca, admin, bad_bytes)
        assert bad == digest_of(bad_bytes)
        metric = accuracy_metric("result >= baseline - 0.05", baseline="stable", minReportingDevices=2, count=2)
        second = rollout_manifest(
            "digits-bad", {"artifact": bad}, [{"setWeight": 5}, {"analysis": {"metrics": ["accuracy"]}},
                                              {"setWeight": 50}, {"setWeight": 100}], [metric],
        )  # fmt: skip
        assert apply(control_plane, ns, second).returncode == 0
        follow = Follower(kube, ns, "digits-bad", devices, bad)
        follow.until("the bad version on some devices", lambda s: bad in set(devices.versions(True)), timeout=180)
        away = sorted(d for d, v in devices.running().items() if v == bad)[:3]
        devices.go_offline(away)
        follow.until("the abort", lambda s: s.get("phase") == "Degraded", timeout=300)
        aborted_at = time.monotonic()
        wait_for("every connected device back on stable", lambda: set(devices.versions(True)) == {good}, timeout=30)
        back = time.monotonic() - aborted_at
        assert back < 5.0 + 1.0, f"devices took {back:.1f}s to go back (polling adds up to 0.5 s)"
        assert follow.max_weight <= 5
        devices.come_online(away)
        wait_for("the offline devices back on stable", lambda: all(
            v == good for d, v in devices.running().items() if d in away
        ), timeout=120)  # fmt: skip
        status = rollout_status(kube, ns, "digits-bad")
        assert status["weight"] == 0 and status["reason"] in ("AnalysisFailed", "AnalysisError")

        # --- (c) devices that report nothing: inconclusive → paused, never promoted; then aborted by hand ----------
        good_bytes = _download(target, ca, token_key, good)
        quiet = publish_model(target, ca, admin, _nudged(good_bytes, seed=1))
        devices.set_reporting(False)
        metric = accuracy_metric("result >= 0.5", minReportingDevices=1, inconclusiveLimit=3)
        silent = rollout_manifest(
            "digits-quiet", {"artifact": quiet}, [{"setWeight": 10}, {"analysis": {"metrics": ["accuracy"]}},
                                                  {"setWeight": 100}], [metric],
        )  # fmt: skip
        assert apply(control_plane, ns, silent).returncode == 0
        follow = Follower(kube, ns, "digits-quiet", devices, quiet)
        status = follow.until("the pause", lambda s: s.get("phase") in ("Paused", "Healthy", "Degraded"), timeout=180)
        assert (status["phase"], status["reason"], status["weight"]) == ("Paused", "AnalysisInconclusive", 10), status
        assert all(m["message"].startswith("no data") for m in status["analysisRuns"][0]["measurements"]), status
        time.sleep(10)  # and it stays there: no data never passes
        status = follow.poll()
        assert (status["phase"], status["weight"], follow.max_weight) == ("Paused", 10, 10), status
        assert quiet in set(devices.versions(True))
        _plugin(control_plane, ns, "abort", "digits-quiet")
        follow.until("the abort", lambda s: s.get("phase") == "Degraded", timeout=60)
        wait_for("every connected device back on stable", lambda: set(devices.versions(True)) == {good}, timeout=30)
        assert rollout_status(kube, ns, "digits-quiet")["reason"] == "Aborted"
        assert {"AnalysisInconclusive", "Aborted"} <= _event_reasons(kube, ns, "digits-quiet")
        devices.set_reporting(True)

        # --- (d) an artifact tampered with where the gateway stores it: refused by devices, aborted by the gate ----
        tampered = publish_model(target, ca, admin, _nudged(good_bytes, seed=2))
        _tamper_on_the_gateway_volume(node_agent, tampered)
        refused_before = devices.refusals().get("digest_mismatch", 0)
        metrics = [activation_failures_metric(), accuracy_metric("result >= 0.5", minReportingDevices=1)]
        broken = rollout_manifest(
            "digits-tampered", {"artifact": tampered},
            [{"setWeight": 10}, {"analysis": {"metrics": ["activation-failures", "accuracy"]}}, {"setWeight": 100}],
            metrics,
        )  # fmt: skip
        assert apply(control_plane, ns, broken).returncode == 0
        follow = Follower(kube, ns, "digits-tampered", devices, tampered)
        status = follow.until("the abort", lambda s: s.get("phase") in ("Degraded", "Healthy"), timeout=180)
        assert (status["phase"], status["reason"]) == ("Degraded", "AnalysisFailed"), status
        assert devices.refusals().get("digest_mismatch", 0) > refused_before, devices.refusals()
        assert tampered not in set(devices.versions()), "a device runs the tampered artifact"
        assert follow.max_weight <= 10
        wait_for("every connected device on stable", lambda: set(devices.versions(True)) == {good}, timeout=30)

        # --- (e, f, g) a held rollout, steered with kubectl fedfleet, through an operator kill and a gateway restart
        held_steps: list[JSON] = [
            {"setWeight": 10},
            {"pause": {}},
            {"setWeight": 30},
            {"pause": {"duration": "1h"}},
            {"setWeight": 100},
        ]
        # Its conditions are never measured here (no analysis step): the steps and the controls are under test.
        held = rollout_manifest("digits-held", {"artifact": bad}, held_steps, [metric])
        assert apply(control_plane, ns, held).returncode == 0
        follow = Follower(kube, ns, "digits-held", devices, bad)
        follow.until("the pause", lambda s: s.get("phase") == "Paused" and s.get("weight") == 10, timeout=120)
        assert "Weight:    10%" in _plugin(control_plane, ns, "status", "digits-held")
        wait_for("the canary on its devices", lambda: bad in set(devices.versions(True)), timeout=60)
        wait_for("every online device on what it is assigned", lambda: not devices.unsettled(), timeout=60)
        snapshot = devices.running()

        # The operator dies: a new one continues at the same step, and no device changes what it runs.
        operator_pod = operator_release["find_pod"]()
        old_pid = pid_of(node_agent, operator_pod, "operator")
        os.kill(old_pid, signal.SIGKILL)

        def operator_back() -> bool:
            pod = operator_release["find_pod"]()
            return pod is not None and pid_of(node_agent, pod, "operator") != old_pid

        wait_for("the operator restarted and ready", operator_back, timeout=120)
        # The gateway pod goes: its replacement reads the fleet's view again; devices keep what they run.
        pods = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods"
        gateway_pods = kube.get(pods, labelSelector="app.kubernetes.io/component=gateway")["items"]
        kube.delete(f"{pods}/{gateway_pods[0]['metadata']['name']}")
        time.sleep(15)
        status = follow.poll()
        assert (status["phase"], status["weight"], status["stepIndex"]) == ("Paused", 10, 1)
        now = devices.running()
        flipped = [d for d in snapshot if snapshot[d] is not None and now[d] is not None and now[d] != snapshot[d]]
        assert not flipped, f"{len(flipped)} devices changed version while nothing changed: {flipped[:5]}"

        # (g) Another model in spec: a new revision, from step 0, on a fresh cohort.
        revision = status["revision"]
        other = publish_model(target, ca, admin, _nudged(good_bytes, seed=3))
        held = rollout_manifest("digits-held", {"artifact": other}, held_steps, [metric])
        assert apply(control_plane, ns, held).returncode == 0
        follow = Follower(kube, ns, "digits-held", devices, other)
        status = follow.until("the new revision", lambda s: s.get("candidate") == other and s.get("phase") == "Paused",
                              timeout=120)  # fmt: skip
        assert (status["revision"], status["stepIndex"], status["weight"]) == (revision + 1, 1, 10), status
        wait_for("the old candidate gone from the devices", lambda: bad not in set(devices.versions(True)), 30)

        # The controls: promote past the pause, pause and resume the timed pause, abort, retry, promote in full.
        _plugin(control_plane, ns, "promote", "digits-held")
        follow.until("weight 30", lambda s: s.get("weight") == 30 and s.get("reason") == "TimedPause", timeout=60)
        _plugin(control_plane, ns, "pause", "digits-held")
        follow.until("paused by a user", lambda s: s.get("reason") == "PausedByUser", timeout=60)
        assert rollout_status(kube, ns, "digits-held")["phase"] == "Paused"
        _plugin(control_plane, ns, "resume", "digits-held")
        follow.until("resumed", lambda s: s.get("reason") == "TimedPause", timeout=60)
        _plugin(control_plane, ns, "abort", "digits-held")
        follow.until("aborted", lambda s: s.get("phase") == "Degraded" and s.get("weight") == 0, timeout=60)
        wait_for("every connected device on stable", lambda: set(devices.versions(True)) == {good}, timeout=30)
        _plugin(control_plane, ns, "retry", "digits-held")
        follow.until("retried from step 0", lambda s: s.get("phase") == "Paused" and s.get("weight") == 10, 60)
        _plugin(control_plane, ns, "promote", "--full", "digits-held")
        follow.until("Healthy after promote --full", lambda s: s.get("phase") == "Healthy", timeout=120)
        waited = kubectl(control_plane, "wait", "-n", ns, "--for=condition=Healthy", "modelrollout/digits-held",
                         "--timeout=10s")  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        wait_for("every online device on the new stable version", lambda: set(devices.versions(True)) == {other}, 60)
        reasons = _event_reasons(kube, ns, "digits-held")
        expected = {"WeightSet", "WaitingForPromotion", "NewRevision", "Promoted", "PausedByUser", "Resumed",
                    "Aborted", "Retried", "PromotedFull"}  # fmt: skip
        assert expected <= reasons, expected - reasons
        assert not devices.errors(), devices.errors()
    finally:
        devices.stop()

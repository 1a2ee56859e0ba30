"""One pod on this node: its containers as local process groups, restarts, probes and its status in the API.

A PodRunner is a thread that owns one pod from the moment it is bound here until the pod object is gone.
Files of the pod live in `<pod dir>`: volumes under `volumes/<name>`, each mountPath as a symlink at
`<pod dir>/<mountPath>`, logs under `logs/`. Processes get FEDFLEET_ROOT=<pod dir> so that fedfleet programs
can resolve absolute mount paths (e.g. /var/run/secrets/...) under it, and run with the pod dir as cwd.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeapi import ApiError, KubeApi
from podspec import (
    ImageRule,
    Lookup,
    PodSpecError,
    configmap_lookup_data,
    container_argv,
    container_env,
    pod_phase,
    resolve_image,
    secret_lookup_data,
    volume_files,
)
from probes import Prober, run_probe

JSON = dict[str, Any]
log = logging.getLogger("nodeagent.runner")

TICK = 0.2  # seconds between passes over the containers
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0  # the kubelet uses 10 s .. 5 min; tests want restarts soon
POD_UID_ENV = "FEDFLEET_POD_UID"  # marks every process of a pod, so leftovers can be found and killed
# Termination messages, as the kubelet has them: the file at terminationMessagePath (this default when unset;
# under the pod dir here, like every in-pod path), emptied before each start and read after each exit, up to
# 4096 bytes; with FallbackToLogsOnError, a failed container that wrote nothing gets the tail of its log.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NodeContext:
    """What every pod on this node shares."""

    api: KubeApi
    node_name: str
    host_ip: str
    api_host: str
    api_port: int
    images: list[ImageRule]
    pods_root: Path


@dataclass
class Container:
    """The runtime state of one container, shaped after its containerStatus."""

    spec: JSON
    init: bool
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSON = field(default_factory=dict)
    ready: bool = False
    started: bool = False  # startupProbe passed (or none)
    ever_ran: bool = False
    final_exit: int | None = None  # set when the restart policy will not start it again
    next_start: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    probers: dict[str, Prober] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128+N, like runc


class PodRunner(threading.Thread):
    def __init__(self, node: NodeContext, pod: JSON, pod_ip: str) -> None:
        super().__init__(name=f"pod-{pod['metadata']['namespace']}/{pod['metadata']['name']}", daemon=True)
        self.node = node
        self.pod = pod
        self.pod_ip = pod_ip
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name_: str = meta["name"]
        self.dir: Path = node.pods_root / self.uid
        self.restart_policy: str = pod["spec"].get("restartPolicy", "Always")
        self.inits = [Container(c, True) for c in pod["spec"].get("initContainers", [])]
        self.apps = [Container(c, False) for c in pod["spec"]["containers"]]
        self._lock = threading.Lock()
        self._stop_grace: float | None = None  # set by stop(): terminate everything within this many seconds
        self._delete_after_stop = False
        self.finished = threading.Event()  # the thread is done; the agent may forget this pod
        self._conditions: dict[str, tuple[str, str]] = {}  # type -> (status, lastTransitionTime)
        self._last_status: JSON | None = None
        self._start_time = now_rfc3339()
        self._token_expiry = float("inf")
        self._setup_error: PodSpecError | None = None
        self._retry_setup_at = 0.0

    # ------------------------------------------------------------------ called by the agent's threads

    def update(self, pod: JSON) -> None:
        with self._lock:
            self.pod = pod

    def stop(self, grace: float, delete: bool) -> None:
        """Terminate the pod's processes within grace seconds; then delete the pod object if asked."""
        with self._lock:
            self._stop_grace = grace if self._stop_grace is None else min(grace, self._stop_grace)
            self._delete_after_stop = self._delete_after_stop or delete

    # ------------------------------------------------------------------------------------ the thread

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: runner crashed; killing its processes", self.ns, self.name_)
            self._kill_all(0)
        finally:
            self.finished.set()

    def _run(self) -> None:
        self._kill_leftovers()
        self._prepare()
        while True:
            with self._lock:
                grace, delete = self._stop_grace, self._delete_after_stop
            if grace is not None:
                self._kill_all(grace)
                if delete:
                    self._push_status()
                    self._delete_pod()
                return
            now = time.monotonic()
            if self._setup_error is not None and now >= self._retry_setup_at:
                # A missing Secret or ConfigMap may appear later: the kubelet keeps retrying too.
                self._retry_setup_at = now + 2.0
                self._prepare()
            if self._setup_error is None and self._phase() not in ("Succeeded", "Failed"):
                self._step(now)
            self._push_status()
            time.sleep(TICK)

    # ---------------------------------------------------------------------------------------- setup

    def _lookup(self, kind: str) -> Lookup:
        def fetch(ns: str, name: str) -> dict[str, bytes] | None:
            try:
                obj = self.node.api.get(f"/api/v1/namespaces/{ns}/{kind}/{name}")
            except ApiError as err:
                if err.code == 404:
                    return None
                raise
            return secret_lookup_data(obj) if kind == "secrets" else configmap_lookup_data(obj)

        return fetch

    def _token(self, ns: str, sa: str, audience: str | None, seconds: int) -> str:
        spec: JSON = {
            "expirationSeconds": max(seconds, 600),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name_, "uid": self.uid},
        }
        if audience:
            spec["audiences"] = [audience]
        answer = self.node.api.create(
            f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        # Refresh at 80% of the lifetime, as the kubelet does.
        self._token_expiry = min(self._token_expiry, time.monotonic() + 0.8 * spec["expirationSeconds"])
        return str(answer["status"]["token"])

    def _write_volumes(self) -> None:
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        for name, volume in volumes.items():
            vdir = self._volume_dir(name, volume)
            files = volume_files(
                self.pod,
                volume,
                pod_ip=self.pod_ip,
                host_ip=self.node.host_ip,
                configmaps=self._lookup("configmaps"),
                secrets=self._lookup("secrets"),
                tokens=self._token,
            )
            vdir.mkdir(parents=True, exist_ok=True)
            for rel, data in (files or {}).items():
                target = vdir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_bytes(data)
                tmp.replace(target)

    def _volume_dir(self, name: str, volume: JSON) -> Path:
        if "hostPath" in volume:
            return Path(volume["hostPath"]["path"])
        if "persistentVolumeClaim" in volume:
            # No storage provisioner here: a claim is a directory of the node that outlives its pods.
            claim = str(volume["persistentVolumeClaim"]["claimName"])
            return self.node.pods_root.parent / "claims" / self.ns / claim
        return self.dir / "volumes" / name

    def _mount(self, container: JSON) -> None:
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                raise PodSpecError("CreateContainerConfigError", f"volumeMount {mount['name']!r}: no such volume")
            source = self._volume_dir(mount["name"], volumes[mount["name"]])
            if mount.get("subPath"):
                source = source / mount["subPath"]
            link = self.dir / mount["mountPath"].lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                continue
            link.symlink_to(source)

    def _prepare(self) -> None:
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self._setup_error = None
        try:
            self._write_volumes()
            for c in self.inits + self.apps:
                self._mount(c.spec)
                c.env = self._env(c.spec)
        except (PodSpecError, ApiError, OSError) as err:
            if not isinstance(err, PodSpecError):  # the API was unreachable or refused: retried like the rest
                err = PodSpecError("CreateContainerConfigError", str(err))
            self._setup_error = err
            for c in self.inits + self.apps:
                c.state = {"waiting": {"reason": err.reason, "message": str(err)}}
            log.warning("pod %s/%s: %s", self.ns, self.name_, err)

    def _env(self, spec: JSON) -> dict[str, str]:
        rule = resolve_image(self.node.images, spec["image"])
        base = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.dir),
            "HOSTNAME": self.name_,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "KUBERNETES_SERVICE_HOST": self.node.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.node.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.node.api_port),
            "FEDFLEET_ROOT": str(self.dir),
            "FEDFLEET_POD_IP": self.pod_ip,
            POD_UID_ENV: self.uid,
            **rule.env,
        }
        return container_env(
            self.pod,
            spec,
            base=base,
            pod_ip=self.pod_ip,
            host_ip=self.node.host_ip,
            configmaps=self._lookup("configmaps"),
            secrets=self._lookup("secrets"),
        )

    # ---------------------------------------------------------------------------------- containers

    def _start(self, c: Container, now: float) -> None:
        try:
            rule = resolve_image(self.node.images, c.spec["image"])
            argv = container_argv(rule, c.spec, c.env)
            cwd = self.dir / c.spec["workingDir"].lstrip("/") if c.spec.get("workingDir") else self.dir
            cwd.mkdir(parents=True, exist_ok=True)
            # securityContext is not applied: the process runs as the agent's user (see e2e/README.md); the API
            # server's PodSecurity admission is what judges the pod's declared security.
            message_file = self._termination_file(c)
            if message_file is not None:  # every run of a container starts with an empty file
                message_file.parent.mkdir(parents=True, exist_ok=True)
                message_file.write_bytes(b"")
            with open(self.dir / "logs" / f"{c.name}.log", "ab") as out:
                c.proc = subprocess.Popen(
                    argv,
                    env=c.env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, so a kill reaches its children too
                )
        except (OSError, PodSpecError) as err:
            c.proc = None
            self._terminated(c, 128, "StartError", str(err), now, started_at=now_rfc3339())
            return
        (self.dir / "logs" / f"{c.name}.pid").write_text(str(c.proc.pid))
        c.ever_ran = True
        c.state = {"running": {"startedAt": now_rfc3339()}}
        c.started = "startupProbe" not in c.spec
        c.ready = False
        c.probers = {
            kind: Prober(c.spec[kind], result=(kind == "livenessProbe"), started_at=now)
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")
            if kind in c.spec
        }
        log.info("pod %s/%s: started %s (pid %d): %s", self.ns, self.name_, c.name, c.proc.pid, argv)

    def _terminated(
        self, c: Container, code: int, reason: str, message: str, now: float, started_at: str | None = None
    ) -> None:
        started = started_at or c.state.get("running", {}).get("startedAt", now_rfc3339())
        term: JSON = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_rfc3339()}
        if message:
            term["message"] = message[-MAX_TERMINATION_MESSAGE_BYTES:]
        c.ready = False
        c.proc = None
        if c.init:  # init containers always run to success; only a failure is retried, unless Never
            restart = code != 0 and self.restart_policy != "Never"
        else:
            restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
        if restart and self._stop_grace is None:
            delay = min(BACKOFF_MAX, BACKOFF_START * 2**c.restart_count)
            c.next_start = now + delay
            c.last_state = {"terminated": term}
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {delay:.0f}s restarting"}}
            c.restart_count += 1
        else:
            c.state = {"terminated": term}
            c.final_exit = code

    def _reap(self, c: Container, now: float) -> None:
        if c.proc is None:
            return
        rc = c.proc.poll()
        if rc is None:
            return
        code = _exit_code(rc)
        self._terminated(c, code, "Completed" if code == 0 else "Error", self._termination_message(c, code), now)

    def _termination_file(self, c: Container) -> Path | None:
        path = Path(c.spec.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH)
        if not path.is_absolute() or ".." in path.parts:  # the API server refuses these; never leave the pod dir
            return None
        return self.dir / path.relative_to("/")

    def _termination_message(self, c: Container, code: int) -> str:
        """What the kubelet reports as the container's termination message once it has exited with `code`."""
        message = b""
        message_file = self._termination_file(c)
        if message_file is not None:
            with contextlib.suppress(OSError), open(message_file, "rb") as written:
                message = written.read(MAX_TERMINATION_MESSAGE_BYTES)
        fallback = c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        if not message.strip() and code != 0 and fallback:
            with contextlib.suppress(OSError):
                tail = (self.dir / "logs" / f"{c.name}.log").read_bytes()[-LOG_TAIL_BYTES:]
                message = b"".join(tail.splitlines(keepends=True)[-LOG_TAIL_LINES:])
        return message.decode("utf-8", "replace")

    def _probe(self, c: Container, now: float) -> None:
        if c.proc is None:
            return
        cwd = str(self.dir)
        startup = c.probers.get("startupProbe")
        if startup and not c.started:
            if startup.due(now):
                ok = run_probe(startup.probe, self.pod_ip, c.spec, c.env, cwd)
                c.started = startup.record(ok, now)
                if startup.exhausted:
                    self._kill_container(c, now, "startup probe failed")
            return
        readiness = c.probers.get("readinessProbe")
        if readiness is None:
            c.ready = True
        elif readiness.due(now):
            c.ready = readiness.record(run_probe(readiness.probe, self.pod_ip, c.spec, c.env, cwd), now)
        liveness = c.probers.get("livenessProbe")
        if liveness and liveness.due(now):
            alive = liveness.record(run_probe(liveness.probe, self.pod_ip, c.spec, c.env, cwd), now)
            if not alive:
                self._kill_container(c, now, "liveness probe failed")

    def _kill_container(self, c: Container, now: float, why: str) -> None:
        log.info("pod %s/%s: killing %s: %s", self.ns, self.name_, c.name, why)
        proc = c.proc
        if proc is None:
            return
        self._signal_and_wait([proc], self._grace())
        self._terminated(c, _exit_code(proc.returncode or -9), "Error", why, now)

    def _step(self, now: float) -> None:
        if now >= self._token_expiry:
            self._token_expiry = float("inf")
            try:
                self._write_volumes()
            except (ApiError, PodSpecError, OSError) as err:
                log.warning("pod %s/%s: refreshing volumes: %s", self.ns, self.name_, err)
        # Init containers run one at a time, each to success, before any app container starts.
        for c in self.inits:
            self._reap(c, now)
            if c.final_exit == 0:
                continue
            if c.final_exit is not None:
                return  # failed under restartPolicy Never: the pod has failed
            if c.proc is None and now >= c.next_start:
                self._start(c, now)
            return
        for c in self.apps:
            self._reap(c, now)
            if c.proc is None and c.final_exit is None and now >= c.next_start:
                self._start(c, now)
            self._probe(c, now)

    # ----------------------------------------------------------------------------------- stopping

    def _grace(self) -> float:
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    @staticmethod
    def _signal_and_wait(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            # SIGKILL the group even when the leader is gone: its children may linger.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _kill_all(self, grace: float) -> None:
        running = [c for c in self.inits + self.apps if c.proc is not None]
        procs = [c.proc for c in running if c.proc is not None]
        self._signal_and_wait(procs, grace)
        for c in running:
            assert c.proc is not None
            code = _exit_code(c.proc.returncode)
            c.proc = None
            started = c.state.get("running", {}).get("startedAt", now_rfc3339())
            c.state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": started,
                    "finishedAt": now_rfc3339(),
                }
            }
            c.final_exit, c.ready = code, False

    def _kill_leftovers(self) -> None:
        """Kill processes of this pod left behind by an agent that died without cleaning up."""
        for pid_file in (self.dir / "logs").glob("*.pid") if (self.dir / "logs").exists() else []:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                if f"{POD_UID_ENV}={self.uid}".encode() in environ.split(b"\0"):
                    os.killpg(pid, signal.SIGKILL)

    def _delete_pod(self) -> None:
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        with contextlib.suppress(ApiError, OSError):  # already gone, or replaced by a pod of the same name
            self.node.api.delete(f"/api/v1/namespaces/{self.ns}/pods/{self.name_}", body)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -------------------------------------------------------------------------------------- status

    def _phase(self) -> str:
        if self._setup_error is not None:
            return "Pending"
        init_failed = any(c.final_exit not in (None, 0) for c in self.inits)
        init_done = all(c.final_exit == 0 for c in self.inits)
        all_started = all(c.ever_ran or c.final_exit is not None for c in self.apps)
        return pod_phase(init_done, init_failed, all_started, [c.final_exit for c in self.apps])

    def _condition(self, kind: str, ok: bool) -> JSON:
        status = "True" if ok else "False"
        previous = self._conditions.get(kind)
        if previous is None or previous[0] != status:
            self._conditions[kind] = (status, now_rfc3339())
        return {"type": kind, "status": status, "lastTransitionTime": self._conditions[kind][1], "lastProbeTime": None}

    def _container_status(self, c: Container) -> JSON:
        def full(state: JSON) -> JSON:
            # A strategic merge patch merges maps: name all three keys so the old state is removed.
            return {k: state.get(k) for k in ("waiting", "running", "terminated")}

        status: JSON = {
            "name": c.name,
            "image": c.spec["image"],
            "imageID": "",
            "ready": c.ready,
            "started": c.proc is not None and c.started,
            "restartCount": c.restart_count,
            "state": full(c.state),
            "lastState": full(c.last_state),
        }
        if c.proc is not None:
            status["containerID"] = f"fedfleet://{self.uid}-{c.name}-{c.proc.pid}"
        return status

    def status(self) -> JSON:
        phase = self._phase()
        init_done = all(c.final_exit == 0 for c in self.inits)
        ready = phase == "Running" and all(c.ready for c in self.apps)
        return {
            "phase": phase,
            "hostIP": self.node.host_ip,
            "hostIPs": [{"ip": self.node.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self._start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", True),
                self._condition("Initialized", init_done),
                self._condition("ContainersReady", ready),
                self._condition("Ready", ready),
                self._condition("PodScheduled", True),
            ],
            "initContainerStatuses": [self._container_status(c) for c in self.inits],
            "containerStatuses": [self._container_status(c) for c in self.apps],
        }

    def _push_status(self) -> None:
        status = self.status()
        if status == self._last_status:
            return
        try:
            self.node.api.patch(f"/api/v1/namespaces/{self.ns}/pods/{self.name_}/status", {"status": status})
        except ApiError as err:
            if err.code != 404:
                log.warning("pod %s/%s: status update failed: %s", self.ns, self.name_, err)
            return
        except OSError as err:  # the API server is unreachable for a moment: try again next tick
            log.warning("pod %s/%s: status update failed: %s", self.ns, self.name_, err)
            return
        self._last_status = status

"""A node agent that plays the kubelet (and a tiny scheduler) for fedfleet's end-to-end tests.

There is no container runtime on the test machines, so the containers of pods bound to this node run as
local process groups. The agent

* registers a Node (Ready, with capacity) and keeps it alive through its Lease and status heartbeats;
* binds pods that no scheduler has placed (no `spec.nodeName`, default scheduler, matching nodeSelector)
  to itself: no kube-scheduler runs here;
* runs each container of its pods with the command an image map gives for the image (see podspec.py),
  the pod spec's command/args/env (incl. fieldRef, configMap/secret refs, envFrom), and its volumes
  (secret, configMap, projected incl. the service-account token from the TokenRequest API, downwardAPI,
  emptyDir, hostPath; a PVC is a directory of the node) under the pod's directory;
* gives each pod its own address in 127.0.0.0/8 (status.podIP, FEDFLEET_POD_IP) — the one its annotation
  `nodeagent.fedfleet.io/pod-ip` names, if any, as a stable address in place of a Service — reports phase,
  container states, restart counts and readiness from the pod's probes, restarts per restartPolicy,
  termination messages (terminationMessagePath under the pod's directory, FallbackToLogsOnError);
* on deletion, SIGTERMs the process groups, SIGKILLs them after the grace period, then removes the pod.

Programs see FEDFLEET_ROOT=<pod dir>: an absolute mountPath such as /var/run/secrets/kubernetes.io/
serviceaccount exists as <pod dir>/var/run/secrets/kubernetes.io/serviceaccount, so fedfleet programs
resolve mount paths under FEDFLEET_ROOT when it is set. KUBERNETES_SERVICE_HOST/PORT point at the real
API server. Not emulated: Services and DNS (nothing routes ClusterIPs; connect to pod IPs), resource
limits, preStop hooks, `kubectl logs/exec` (logs are files in <pod dir>/logs).

    python e2e/nodeagent/agent.py --kubeconfig STATE/kubeconfig --image-map images.yaml --state-dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import faulthandler
import ipaddress
import logging
import os
import platform
import signal
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from kubeapi import ApiError, KubeApi
from podspec import load_image_map
from runner import NodeContext, PodRunner, now_rfc3339

JSON = dict[str, Any]
log = logging.getLogger("nodeagent")

#: A pod annotated with an address of the pod CIDR always gets that address: the stand-in for a Service's
#: stable address, which nothing routes here. Its replacement waits until the old pod has let it go.
PINNED_IP_ANNOTATION = "nodeagent.fedfleet.io/pod-ip"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
AGENT_VERSION = "v1.37.2-fedfleet-nodeagent"


def _memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


class IpPool:
    """Pod addresses from a loopback CIDR: on Linux all of 127.0.0.0/8 reaches this host without setup."""

    def __init__(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr)
        if not net.subnet_of(ipaddress.ip_network("127.0.0.0/8")):  # type: ignore[arg-type]
            raise ValueError(f"--pod-cidr {cidr}: must lie in 127.0.0.0/8 (nothing may be sent elsewhere)")
        self._free = [str(ip) for ip in list(net.hosts())[1:]]  # the first host is left out, like a gateway
        self._all = frozenset(self._free)
        self._lock = threading.Lock()

    def take(self, wanted: str | None = None) -> str:
        with self._lock:
            if wanted in self._free:
                self._free.remove(wanted)
                return wanted
            if not self._free:
                raise RuntimeError("pod CIDR exhausted")
            return self._free.pop(0)

    def holds(self, ip: str) -> bool:
        """True when `ip` belongs to the pool (free or taken)."""
        with self._lock:
            return ip in self._all

    def is_free(self, ip: str) -> bool:
        with self._lock:
            return ip in self._free

    def give_back(self, ip: str) -> None:
        with self._lock:
            self._free.insert(0, ip)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.api = KubeApi.from_kubeconfig(args.kubeconfig)
        server = urllib.parse.urlsplit(self.api.server)
        self.node_name: str = args.node_name
        self.labels = {
            "kubernetes.io/hostname": args.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **dict(label.split("=", 1) for label in args.node_label),
        }
        self.schedule: bool = args.schedule
        self.state_dir: Path = args.state_dir.resolve()
        self.node = NodeContext(
            api=self.api,
            node_name=args.node_name,
            host_ip="127.0.0.1",
            api_host=server.hostname or "127.0.0.1",
            api_port=server.port or 443,
            images=load_image_map(args.image_map),
            pods_root=self.state_dir / "pods",
        )
        self.ips = IpPool(args.pod_cidr)
        self.runners: dict[str, PodRunner] = {}
        self.ips_by_uid: dict[str, str] = {}
        self.waiting: dict[str, JSON] = {}  # uid -> pod waiting for its pinned address to be free
        self.stopping = threading.Event()
        self._transition: dict[str, str] = {}  # node condition type -> lastTransitionTime
        self._node_uid = ""

    # ------------------------------------------------------------------------------------------- node

    def _node_status(self) -> JSON:
        now = now_rfc3339()
        capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": str(_memory_bytes()),
            "pods": "110",
            "ephemeral-storage": "10Gi",
        }

        def cond(kind: str, status: str, reason: str, message: str) -> JSON:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._transition.setdefault(kind, now),
            }

        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "enough PIDs"),
                cond("Ready", "True", "KubeletReady", "fedfleet node agent is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.node.host_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "fedfleet node agent",
                "containerRuntimeVersion": "fedfleet-process://0.1",
                "kubeletVersion": AGENT_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": self.labels}}
        try:
            node = self.api.create("/api/v1/nodes", body)
            log.info("registered node %s", self.node_name)
        except ApiError as err:
            if err.code != 409:
                raise
            node = self.api.patch(f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": self.labels}})
            log.info("node %s exists; taking it over", self.node_name)
        self._node_uid = node["metadata"]["uid"]
        self.heartbeat()

    def heartbeat(self) -> None:
        self.api.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
        self._renew_lease()

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        renew = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew}
        try:
            lease = self.api.get(path)
        except ApiError as err:
            if err.code != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._node_uid}
            self.api.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {"metadata": {"name": self.node_name, "ownerReferences": [owner]}, "spec": spec},
            )
            return
        lease["spec"].update(spec)
        self.api.replace(path, lease)

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception as err:  # a missed heartbeat is retried; the node goes NotReady only after 40s
                log.warning("heartbeat failed: %s", err)

    # ------------------------------------------------------------------------------------------- pods

    def _fits(self, pod: JSON) -> bool:
        spec = pod["spec"]
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return False
        selector = spec.get("nodeSelector", {})
        return all(self.labels.get(k) == v for k, v in selector.items())

    def _bind(self, pod: JSON) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.api.create(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body)
            log.info("bound pod %s/%s to %s", meta["namespace"], meta["name"], self.node_name)
        except ApiError as err:
            if err.code not in (404, 409):  # gone, or bound meanwhile
                log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"], err)

    def handle(self, event_type: str, pod: JSON) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        runner = self.runners.get(uid)
        if event_type == "DELETED":
            self.waiting.pop(uid, None)
            if runner:
                runner.stop(0.0, delete=False)
            return
        node_name = spec.get("nodeName")
        if not node_name:
            if self.schedule and "deletionTimestamp" not in meta and self._fits(pod):
                self._bind(pod)
            return
        if node_name != self.node_name:
            return
        if "deletionTimestamp" in meta:
            self.waiting.pop(uid, None)
            grace = float(meta.get("deletionGracePeriodSeconds", 30))
            if runner:
                runner.update(pod)
                runner.stop(grace, delete=True)
            else:  # nothing of it runs here (finished, or from before this agent started)
                with contextlib.suppress(ApiError):
                    self.api.delete(
                        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                    )
            return
        if runner:
            runner.update(pod)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return  # finished before this agent started: never run again
        pinned = self._pinned_ip(pod)
        if pinned is not None and not self.ips.is_free(pinned):
            if uid not in self.waiting:
                log.info("pod %s/%s waits for its address %s", meta["namespace"], meta["name"], pinned)
            self.waiting[uid] = pod
            return
        self.waiting.pop(uid, None)
        ip = self.ips.take(pinned or pod.get("status", {}).get("podIP"))
        self.ips_by_uid[uid] = ip
        runner = PodRunner(self.node, pod, ip)
        self.runners[uid] = runner
        log.info("running pod %s/%s at %s", meta["namespace"], meta["name"], ip)
        runner.start()

    def _pinned_ip(self, pod: JSON) -> str | None:
        wanted = (pod["metadata"].get("annotations") or {}).get(PINNED_IP_ANNOTATION)
        if wanted is None:
            return None
        if not self.ips.holds(wanted):
            log.warning("pod %s: %s=%r is not an address of the pod CIDR; ignored", pod["metadata"]["name"],
                        PINNED_IP_ANNOTATION, wanted)  # fmt: skip
            return None
        return str(wanted)

    def _forget_finished(self) -> None:
        freed = False
        for uid, runner in list(self.runners.items()):
            if runner.finished.is_set():
                del self.runners[uid]
                self.ips.give_back(self.ips_by_uid.pop(uid))
                freed = True
        if freed:
            for pod in list(self.waiting.values()):  # an address they wait for may be free now
                self.handle("MODIFIED", pod)

    def _watch_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                listing = self.api.get("/api/v1/pods")
                rv = listing["metadata"]["resourceVersion"]
                present = set()
                for pod in listing["items"]:
                    present.add(pod["metadata"]["uid"])
                    self.handle("MODIFIED", pod)
                for uid, runner in list(self.runners.items()):
                    if uid not in present:
                        runner.stop(0.0, delete=False)
                while not self.stopping.is_set():
                    expired = False
                    for event in self.api.watch("/api/v1/pods", rv, timeout_seconds=30):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            expired = True  # usually 410 Gone: the resource version is too old; list again
                            break
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self.handle(event["type"], obj)
                        self._forget_finished()
                    self._forget_finished()
                    if expired:
                        break
            except Exception as err:
                if not self.stopping.is_set():
                    log.warning("pod watch failed, listing again: %s", err)
                    time.sleep(1.0)

    # -------------------------------------------------------------------------------------- lifecycle

    def run(self) -> None:
        self.register()
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._watch_loop, name="pod-watch", daemon=True),
        ]
        for t in threads:
            t.start()
        log.info("node %s ready; pods under %s", self.node_name, self.node.pods_root)
        self.stopping.wait()
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every pod's processes (the API objects stay: a restarted agent runs them again)."""
        log.info("shutting down: stopping %d pods", len(self.runners))
        for runner in list(self.runners.values()):
            runner.stop(5.0, delete=False)
        for runner in list(self.runners.values()):
            runner.finished.wait(15.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent.py", description="fedfleet node agent (a kubelet for tests)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="never taken from the environment")
    parser.add_argument("--image-map", type=Path, required=True, help="YAML/JSON: image pattern -> command")
    parser.add_argument("--state-dir", type=Path, required=True, help="pod directories and claims go here")
    parser.add_argument("--node-name", default="fedfleet-node")
    parser.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pod-cidr", default="127.0.10.0/24", help="pod addresses, inside 127.0.0.0/8")
    parser.add_argument("--no-schedule", dest="schedule", action="store_false", help="do not bind pending pods")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for label in args.node_label:
        if "=" not in label:
            parser.error(f"--node-label {label!r}: expected KEY=VALUE")
    try:
        agent = Agent(args)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <agent>` prints every thread's stack to the log
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

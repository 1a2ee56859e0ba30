"""Container probes (httpGet, tcpSocket, exec, grpc) against a pod's own 127.x address, with the kubelet's
timing and threshold rules."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


def _port(value: int | str, container: JSON) -> int:
    """A probe port: a number, or the name of one of the container's ports."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for port in container.get("ports", []):
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"probe port {value!r} is not a named port of container {container['name']!r}")


def _http_get(spec: JSON, pod_ip: str, container: JSON, timeout: float) -> bool:
    host = spec.get("host") or pod_ip
    port = _port(spec["port"], container)
    conn: http.client.HTTPConnection
    if spec.get("scheme", "HTTP").upper() == "HTTPS":
        # The kubelet does not verify the serving certificate of a probe either.
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders", [])}
        headers.setdefault("User-Agent", "kube-probe/fedfleet-nodeagent")
        conn.request("GET", spec.get("path", "/"), headers=headers)
        return 200 <= conn.getresponse().status < 400
    finally:
        conn.close()


def _tcp(spec: JSON, pod_ip: str, container: JSON, timeout: float) -> bool:
    with socket.create_connection((spec.get("host") or pod_ip, _port(spec["port"], container)), timeout=timeout):
        return True


def _exec(spec: JSON, env: Mapping[str, str], cwd: str, timeout: float) -> bool:
    result = subprocess.run(spec["command"], env=dict(env), cwd=cwd, timeout=timeout, capture_output=True, check=False)
    return result.returncode == 0


def _grpc(spec: JSON, pod_ip: str, timeout: float) -> bool:
    """grpc.health.v1.Health/Check, encoded by hand so no generated stubs are needed."""
    import grpc  # only probes of this kind need grpcio

    service = str(spec.get("service", "")).encode()
    request = b"\x0a" + bytes([len(service)]) + service if service else b""
    with grpc.insecure_channel(f"{pod_ip}:{int(spec['port'])}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        response = check(request, timeout=timeout)
    return bool(response == b"\x08\x01")  # field 1 (status) = SERVING


def run_probe(probe: JSON, pod_ip: str, container: JSON, env: Mapping[str, str], cwd: str) -> bool:
    """One probe attempt; any error (refused, timeout, bad status) is a failure."""
    timeout = float(probe.get("timeoutSeconds", 1))
    with contextlib.suppress(Exception):
        if "httpGet" in probe:
            return _http_get(probe["httpGet"], pod_ip, container, timeout)
        if "tcpSocket" in probe:
            return _tcp(probe["tcpSocket"], pod_ip, container, timeout)
        if "exec" in probe:
            return _exec(probe["exec"], env, cwd, timeout)
        if "grpc" in probe:
            return _grpc(probe["grpc"], pod_ip, timeout)
    return False


@dataclass
class Prober:
    """One probe of one container: when it is due, and its result after success/failure thresholds."""

    probe: JSON
    result: bool  # what the probe reports before it has decided (readiness: False, liveness: True)
    started_at: float
    _next: float = field(init=False)
    _successes: int = 0
    _failures: int = 0

    def __post_init__(self) -> None:
        self._next = self.started_at + float(self.probe.get("initialDelaySeconds", 0))

    def due(self, now: float) -> bool:
        return now >= self._next

    @property
    def exhausted(self) -> bool:
        """The failure threshold is reached (for a startup probe: the container is to be killed)."""
        return self._failures >= int(self.probe.get("failureThreshold", 3))

    def record(self, ok: bool, now: float) -> bool:
        """Count one attempt; return the probe's result after the thresholds."""
        self._next = now + float(self.probe.get("periodSeconds", 10))
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            if self._successes >= int(self.probe.get("successThreshold", 1)):
                self.result = True
        else:
            self._failures, self._successes = self._failures + 1, 0
            if self._failures >= int(self.probe.get("failureThreshold", 3)):
                self.result = False
        return self.result

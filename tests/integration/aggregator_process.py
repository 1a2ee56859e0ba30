"""What the tests that run `fedfleet aggregator` and `fedfleet device-sim` as processes share: free ports, the
HTTP endpoints, waiting for a condition, and starting the commands."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

FEDFLEET = Path(sys.executable).with_name("fedfleet")


def free_port() -> int:
    """A port free now. A test that closes it and lets a process bind it later must not run beside another
    such test: those share the xdist group "fixed-ports"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on the aggregator's HTTP port; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_aggregator(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`fedfleet aggregator --config config` in its own session, appending its output to `log`."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            [str(FEDFLEET), "aggregator", "--config", str(config)], stdout=sink, stderr=sink, start_new_session=True
        )


def start_device_sim(target: str, job: Path, state: Path, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """`fedfleet device-sim` against `target` with the token key and CA an aggregator generated under `state`,
    logging at INFO to `log` (each device logs "the job is done" when it hears it); its report on stdout."""
    return subprocess.Popen(
        [str(FEDFLEET), "device-sim", "--aggregator", target, "--job", str(job),
         "--token-key", str(state / "token.key"), "--ca", str(state / "tls/ca.crt"), "--log-level", "INFO", *options],
        stdout=subprocess.PIPE, stderr=log.open("wb"), start_new_session=True,
    )  # fmt: skip


def aggregator_config(state: str, grpc_port: int, http_port: int | None, **settings: object) -> str:
    """An aggregator configuration (YAML) for `job.yaml` beside it, generating its TLS files and token key
    under `state`; `settings` are further top-level fields, spelled as in the file."""
    http = f"{{host: 127.0.0.1, port: {http_port}}}" if http_port is not None else "null"
    lines = [
        "job: job.yaml",
        f"listen: {{host: 127.0.0.1, port: {grpc_port}}}",
        f"http: {http}",
        f"tls: {{cert: {state}/tls/server.crt, key: {state}/tls/server.key, ca: {state}/tls/ca.crt, generate: true}}",
        f"auth: {{tokenKey: {state}/token.key, generate: true}}",
        f"stateDir: {state}",
        *(f"{key}: {value}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"

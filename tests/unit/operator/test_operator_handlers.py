"""The kopf wiring: settings reach the handlers in kopf's memo, read when the operator starts, never at import."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from prometheus_client import CollectorRegistry

from fedfleet.operator import handlers
from fedfleet.operator.config import OperatorConfig
from fedfleet.operator.kube_credentials import load
from fedfleet.operator.metrics import OperatorMetrics

PACKAGE_ROOT = Path(handlers.__file__).resolve().parents[2]  # the source root that holds `fedfleet`


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "current-context": "test",
                "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u", "namespace": "ops"}}],
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "secret-token"}}],
            }
        )
    )
    return path


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("FEDFLEET_", "KUBERNETES_")):
            monkeypatch.delenv(name)
    yield


def _start(memo: kopf.Memo) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()

    async def run() -> None:
        await handlers.startup(settings=settings, memo=memo)
        await handlers.cleanup(memo=memo)  # closes the HTTP session startup opened

    asyncio.run(run())
    return settings


def test_importing_the_handlers_reads_no_settings() -> None:
    # Before the operator starts, even a bad setting does not matter: nothing is read at import.
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "FEDFLEET_OPERATOR_RESYNC_SECONDS": "soon"}
    done = subprocess.run(
        [sys.executable, "-c", "import fedfleet.operator.handlers"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_startup_takes_mains_settings_and_credentials_from_the_memo(kubeconfig: Path, clean_environment: None) -> None:
    config = OperatorConfig(resync_seconds=1.5, aggregator_image="agg:1", kubeconfig=kubeconfig)
    metrics = OperatorMetrics(CollectorRegistry())
    memo = handlers.operator_memo(config, metrics, load(kubeconfig))
    settings = _start(memo)
    state = memo[handlers.MEMO_STATE]
    assert state.config is config and state.metrics is metrics
    # The startup handler that tunes watch timeouts still runs (stalled watch streams).
    assert (settings.watching.server_timeout, settings.watching.client_timeout) == (
        handlers.SERVER_TIMEOUT,
        handlers.CLIENT_TIMEOUT,
    )
    info = handlers.login(memo=memo)
    assert (info.server, info.token, info.default_namespace) == ("https://127.0.0.1:6443", "secret-token", "ops")


def test_under_kopf_run_the_startup_reads_the_environment(
    kubeconfig: Path, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDFLEET_OPERATOR_RESYNC_SECONDS", "7")
    monkeypatch.setenv("FEDFLEET_OPERATOR_ENDPOINT_MODE", "service")
    monkeypatch.setenv("FEDFLEET_OPERATOR_KUBECONFIG", str(kubeconfig))
    memo = kopf.Memo()
    _start(memo)
    state = memo[handlers.MEMO_STATE]
    assert (state.config.resync_seconds, state.config.endpoint_mode) == (7.0, "service")
    assert state.credentials.server == "https://127.0.0.1:6443"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEDFLEET_OPERATOR_RESYNC_SECONDS": "0"}, "FEDFLEET_OPERATOR_RESYNC_SECONDS: must be greater than 0"),
        ({}, "not in a cluster"),
    ],
)
def test_a_setting_that_can_never_work_stops_the_operator(
    env: dict[str, str], message: str, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(kopf.PermanentError, match=message):
        _start(kopf.Memo())


class _Stopped:
    """Stands in for kopf's DaemonStopped: records each wait and reports "stopped" after `waits` of them."""

    def __init__(self, waits: int) -> None:
        self.left = waits
        self.timeouts: list[float] = []

    def wait(self, timeout: float) -> Any:
        self.timeouts.append(timeout)
        self.left -= 1

        async def done() -> bool:
            return self.left < 0

        return done()


def test_resync_runs_every_resync_seconds_and_backs_off_as_an_error_asks(
    kubeconfig: Path, clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = OperatorConfig(resync_seconds=2.5, kubeconfig=kubeconfig)
    memo = handlers.operator_memo(config, OperatorMetrics(CollectorRegistry()), load(kubeconfig))
    _start(memo)
    calls: list[tuple[str, str]] = []

    async def reconcile_job(state: handlers.OperatorState, namespace: str, name: str) -> None:
        calls.append((namespace, name))
        if len(calls) == 2:
            raise kopf.TemporaryError("api server busy", delay=11)

    monkeypatch.setattr(handlers, "reconcile_job", reconcile_job)
    stopped = _Stopped(waits=3)
    asyncio.run(handlers.resync(namespace="team-a", name="digits", memo=memo, stopped=stopped))
    assert calls == [("team-a", "digits")] * 3
    assert stopped.timeouts == [2.5, 2.5, 11, 2.5]  # the settings' interval; after the error, its delay

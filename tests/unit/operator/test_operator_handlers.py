"""The kopf wiring: settings reach the handlers in kopf's memo, read when the operator starts, never at import;
and what a job says when the API server refuses one of its children (over HTTP, against FakeKube)."""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kopf_diffbase
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from fake_kube import FakeKube
from operator_jobs import job_body
from prometheus_client import CollectorRegistry

from fedfleet.api.rules import MAX_NAME_LENGTH
from fedfleet.operator import handlers
from fedfleet.operator.config import OperatorConfig
from fedfleet.operator.k8s import JobApi, KubeClient, job_path
from fedfleet.operator.kube_credentials import KubeCredentials, load
from fedfleet.operator.metrics import OUTCOMES, OperatorMetrics
from fedfleet.security.certs import common_name

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


# --- children the API server refuses, over HTTP ------------------------------------------------------
# The handler, k8s.py and the operator's HTTP client against FakeKube: what a user finds on the job when the
# API server will not create one of its children.

NAMESPACE = "team-a"
JOB = job_path(NAMESPACE, "digits")
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
SERVICES = f"/api/v1/namespaces/{NAMESPACE}/services"
PODSECURITY = (
    'pods "digits-aggregator" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation '
    '!= false (container "aggregator" must set securityContext.allowPrivilegeEscalation=false)'
)
STATIC_KINDS = ["ConfigMap", "PersistentVolumeClaim", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount"]


def _on_fake_kube(scenario: Callable[[FakeKube, handlers.OperatorState], Awaitable[None]]) -> FakeKube:
    kube = FakeKube()

    async def run() -> None:
        async with kube.running():
            creds = KubeCredentials(server=kube.server, ca_file=None, token="test-token")
            client = KubeClient.connect(creds)
            state = handlers.OperatorState(
                OperatorConfig(), creds, JobApi(client), OperatorMetrics(CollectorRegistry())
            )
            try:
                await scenario(kube, state)
            finally:
                await client.close()

    asyncio.run(run())
    return kube


def _conditions(kube: FakeKube, path: str = JOB) -> dict[str, tuple[str, str, str]]:
    status = kube.objects[path].get("status", {})
    return {c["type"]: (c["status"], c["reason"], c.get("message", "")) for c in status.get("conditions", [])}


def _warnings(kube: FakeKube) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in kube.events if e["type"] == "Warning"]


def _outcomes(state: handlers.OperatorState) -> dict[str, float | None]:
    registry = state.metrics.registry
    return {o: registry.get_sample_value("fedfleet_operator_reconciliations_total", {"outcome": o}) for o in OUTCOMES}


def test_a_pod_podsecurity_forbids_stalls_the_job_with_the_api_message_and_is_retried() -> None:
    async def scenario(kube: FakeKube, state: handlers.OperatorState) -> None:
        kube.put(JOB, job_body())
        kube.refuse(PODS, 403, PODSECURITY)
        with pytest.raises(kopf.TemporaryError) as caught:
            await handlers.reconcile_job(state, NAMESPACE, "digits")
        assert caught.value.delay == handlers.RETRY_DELAY * 6  # a person has to act: no hurry
        assert kube.kinds_created(NAMESPACE) == STATIC_KINDS
        stalled = _conditions(kube)["Stalled"]
        assert stalled[:2] == ("True", "ChildForbidden")
        assert stalled[2] == f"creating Pod digits-aggregator: the API server answered 403: {PODSECURITY}"
        assert _conditions(kube)["Ready"][:2] == ("False", "ChildForbidden")
        assert kube.objects[JOB]["status"]["phase"] == "Pending"
        assert _warnings(kube) == [("ChildForbidden", stalled[2])]
        assert kube.events[0]["involvedObject"]["name"] == "digits"
        assert _outcomes(state)["requeue"] == 1
        # The retry is refused the same way: nothing new on the job, no second Event.
        with pytest.raises(kopf.TemporaryError):
            await handlers.reconcile_job(state, NAMESPACE, "digits")
        assert len(_warnings(kube)) == 1
        # Allowed now: the pod is made and the job is no longer stalled.
        kube.refusals.clear()
        await handlers.reconcile_job(state, NAMESPACE, "digits")
        assert f"{PODS}/digits-aggregator" in kube.objects
        assert _conditions(kube)["Stalled"][:2] == ("False", "AsExpected")
        assert _conditions(kube)["Reconciling"][:2] == ("True", "CreatingAggregator")

    _on_fake_kube(scenario)


def test_a_child_refused_as_invalid_fails_the_job_once_and_for_all() -> None:
    message = (
        'Service "digits-aggregator" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535'
    )

    async def scenario(kube: FakeKube, state: handlers.OperatorState) -> None:
        kube.put(JOB, job_body())
        kube.refuse(SERVICES, 422, message)
        await handlers.reconcile_job(state, NAMESPACE, "digits")  # no retry: it can never work
        failed = _conditions(kube)["Failed"]
        assert failed == (
            "True",
            "ChildInvalid",
            f"creating Service digits-aggregator: the API server answered 422: {message}",
        )
        assert kube.objects[JOB]["status"]["phase"] == "Failed"
        assert _warnings(kube) == [("ChildInvalid", failed[2])]
        assert _outcomes(state)["error"] == 1
        made = kube.kinds_created(NAMESPACE)
        await handlers.reconcile_job(state, NAMESPACE, "digits")
        assert kube.kinds_created(NAMESPACE) == made and len(kube.events) == 1  # nothing tried or said again

    _on_fake_kube(scenario)


def test_a_stored_job_with_a_dotted_name_fails_before_any_child_is_made() -> None:
    # Before: its Service was refused (422) after the other children were made, and the job's status stayed
    # empty. The CRD refuses such names now; one stored earlier is failed with the reason.
    path = job_path(NAMESPACE, "my.job")

    async def scenario(kube: FakeKube, state: handlers.OperatorState) -> None:
        kube.put(path, job_body(name="my.job"))
        await handlers.reconcile_job(state, NAMESPACE, "my.job")
        failed = _conditions(kube, path)["Failed"]
        assert failed[:2] == ("True", "InvalidName") and failed[2].startswith("metadata.name: must consist of")
        assert kube.kinds_created(NAMESPACE) == []
        assert [reason for reason, _ in _warnings(kube)] == ["InvalidName"]

    _on_fake_kube(scenario)


def test_the_longest_name_in_the_longest_namespace_gets_all_its_children() -> None:
    # Before: a name over ~40 characters made the job CA's common name longer than X.509's 64 → ValueError in
    # the operator, nothing on the job.
    name, namespace = "j" * MAX_NAME_LENGTH, "n" * 63
    path = job_path(namespace, name)

    async def scenario(kube: FakeKube, state: handlers.OperatorState) -> None:
        kube.put(path, job_body(name=name, namespace=namespace))
        await handlers.reconcile_job(state, namespace, name)
        assert kube.kinds_created(namespace) == sorted(["Pod", *STATIC_KINDS])
        assert _warnings(kube) == []
        secret = kube.objects[f"/api/v1/namespaces/{namespace}/secrets/{name}-credentials"]
        ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
        (cn,) = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert cn.value == common_name(f"fedfleet job {namespace}/{name} CA")

    _on_fake_kube(scenario)


def test_a_childs_name_taken_by_another_owner_stalls_the_job_saying_so() -> None:
    async def scenario(kube: FakeKube, state: handlers.OperatorState) -> None:
        kube.put(JOB, job_body())
        foreign = {"kind": "Service", "metadata": {"name": "digits-aggregator", "ownerReferences": [{"uid": "other"}]}}
        kube.put(f"{SERVICES}/digits-aggregator", foreign)
        with pytest.raises(kopf.TemporaryError) as caught:
            await handlers.reconcile_job(state, NAMESPACE, "digits")
        assert caught.value.delay == handlers.RETRY_DELAY  # the usual case: a deleted job's, about to go
        stalled = _conditions(kube)["Stalled"]
        assert stalled[:2] == ("True", "ChildNameTaken")
        assert stalled[2].startswith("reading Service digits-aggregator: it exists but does not belong to this job")

    _on_fake_kube(scenario)


def _with_annotation(body: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["metadata"].setdefault("annotations", {})[key] = value
    return body


def test_the_startup_keeps_annotations_out_of_kopfs_diff_base(kubeconfig: Path, clean_environment: None) -> None:
    memo = handlers.operator_memo(OperatorConfig(kubeconfig=kubeconfig), OperatorMetrics(CollectorRegistry()))
    settings = _start(memo)
    big = _with_annotation(job_body(), "example.com/notes", "x" * 140_000)
    assert "annotations" not in kopf_diffbase.essence(settings, big).get("metadata", {})
    assert kopf_diffbase.essence(settings, big)["spec"] == big["spec"]


def test_a_140_kb_annotation_leaves_the_handled_job_within_the_api_servers_annotation_limit() -> None:
    settings = kopf_diffbase.operator_settings()
    big = _with_annotation(job_body(), "example.com/notes", "x" * 140_000)
    stored = kopf_diffbase.handled(settings, big)
    # Copied into the diff base, the annotation counted twice: 280 KB, refused (422) on every later patch.
    assert kopf_diffbase.annotations_size(stored) < kopf_diffbase.ANNOTATIONS_LIMIT
    assert kopf_diffbase.annotations_size(stored) - kopf_diffbase.annotations_size(big) < 2_000


def test_the_job_diff_base_still_tells_a_spec_change_and_ignores_annotations_and_its_own_record() -> None:
    settings = kopf_diffbase.operator_settings()
    stored = kopf_diffbase.handled(settings, _with_annotation(job_body(), "example.com/notes", "first"))
    base = kopf_diffbase.stored_diffbase(settings, stored)
    # Re-read as it is (kopf's own annotations now on it) or re-annotated: nothing to handle.
    assert kopf_diffbase.essence(settings, stored) == base
    assert kopf_diffbase.essence(settings, _with_annotation(stored, "example.com/notes", "second")) == base
    changed = copy.deepcopy(stored)
    changed["spec"]["rounds"] = 4
    assert kopf_diffbase.essence(settings, changed) != base
    assert kopf_diffbase.essence(settings, changed)["spec"]["rounds"] == 4 and base["spec"]["rounds"] == 3

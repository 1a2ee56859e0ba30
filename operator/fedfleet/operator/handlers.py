"""kopf handlers for FederatedJob: thin, every one of them ends in `reconcile_job`.

    kopf run -m fedfleet.operator.handlers --standalone --all-namespaces   # settings from FEDFLEET_OPERATOR_*
    python -m fedfleet.operator --all-namespaces                          # the same, with flags (main.py)

Settings travel in kopf's operator memo, which kopf hands to every handler: main() puts its OperatorConfig
there (`operator_memo`); under `kopf run -m` the startup handler reads FEDFLEET_OPERATOR_* when the operator
starts. Nothing is read at import, so importing this module never depends on the environment.

What triggers a reconciliation: the job's creation, a spec change, the operator's (re)start (`resume`), a
change of one of its aggregator pods, and every `resync_seconds` (deadlines, progress reported by the
aggregator, children deleted by hand). Each reconciliation reads the job and its children afresh, so the
trigger carries no information and a missed one costs at most one resync interval. A per-job lock keeps two
triggers of the same job from interleaving in this process.

A child the API server refuses (a Service name it does not allow, a pod PodSecurity forbids, a webhook that
is down) is said on the job, not only in this log: its status gets Stalled, or Failed when the request can
never succeed, with the API's message, and a Warning Event. A stalled job is retried; a failed one is not.

Persistence choices (kopf `settings.persistence`):
* handler progress and the last-handled spec go into annotations under `fedfleet.io/` — not into `status`,
  whose schema is structural and owned by the operator and the aggregator;
* the last-handled configuration (kopf's diff base) leaves the object's annotations out (`diffbase_storage`);
* the finalizer `fedfleet.io/finalizer` is kopf's (timers need one to be stopped cleanly). It does not
  guard any cleanup: children carry owner references and garbage collection removes them. If the operator
  is down, a deleted job waits for it; remove the finalizer by hand to delete it anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from fedfleet.api.crd import PLURAL
from fedfleet.api.federatedjob import API_GROUP, API_VERSION
from fedfleet.api.status import FederatedJobStatus
from fedfleet.operator import kube_credentials, naming
from fedfleet.operator.config import OperatorConfig
from fedfleet.operator.job import JobRef
from fedfleet.operator.k8s import ApiError, ChildRequestFailed, JobApi, KubeClient
from fedfleet.operator.kube_credentials import KubeCredentials
from fedfleet.operator.metrics import OperatorMetrics
from fedfleet.operator.reconcile import Plan, reconcile, refused
from fedfleet.operator.resources import new_job_credentials

FINALIZER = f"{API_GROUP}/finalizer"
RETRY_DELAY = 5.0
# Watch streams: the API server ends each watch after SERVER_TIMEOUT seconds and kopf starts a new one; a
# stream that stays silent past CLIENT_TIMEOUT (a dead connection that never closed) is dropped and
# re-established instead of hanging forever: the most reported kopf failure.
SERVER_TIMEOUT = 60
CLIENT_TIMEOUT = 90
CONNECT_TIMEOUT = 10
#: How long a job's resync loop may take to finish a reconciliation once the job or the operator goes.
CANCELLATION_TIMEOUT = 30.0

# Keys of the operator memo that main() fills in (see operator_memo); `kopf run -m` leaves them out.
MEMO_CONFIG, MEMO_METRICS, MEMO_CREDENTIALS, MEMO_STATE = "config", "metrics", "credentials", "state"

log = logging.getLogger("fedfleet.operator")


@dataclass
class OperatorState:
    """What every handler works with, made once by the startup handler and kept in the operator memo."""

    config: OperatorConfig
    credentials: KubeCredentials
    api: JobApi
    metrics: OperatorMetrics
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    #: The ModelRollout controller, made on first use (rollout_handlers). Kept here, not in a handler's memo:
    #: kopf gives each object its own copy of the memo, and one controller (one set of metrics) serves all.
    rollouts: Any = None


def operator_memo(
    config: OperatorConfig, metrics: OperatorMetrics, credentials: KubeCredentials | None = None
) -> kopf.Memo:
    """The memo main() passes to `kopf.run`: its settings, its metrics (served on its registry) and the
    credentials it already checked."""
    memo = kopf.Memo()
    memo[MEMO_CONFIG], memo[MEMO_METRICS] = config, metrics
    if credentials is not None:
        memo[MEMO_CREDENTIALS] = credentials
    return memo


def configure(settings: kopf.OperatorSettings) -> None:
    settings.watching.server_timeout = SERVER_TIMEOUT
    settings.watching.client_timeout = CLIENT_TIMEOUT
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = diffbase_storage()
    # Our Events say what happened to a job; kopf's own would repeat each handler run.
    settings.posting.level = logging.WARNING


def diffbase_storage() -> kopf.DiffBaseStorage:
    """Where kopf keeps what it last handled of an object, to tell a change from a mere re-read: the spec and
    the labels, without the annotations.

    kopf copies the annotations into its own by default, so a big user annotation (140 KB) counted twice and
    pushed the object past the API server's 256 KiB limit on all annotations together: every patch was then
    refused (422) and a deletion hung on the finalizer. No handler needs them: a job reacts to its `spec`
    only, and a rollout's action annotation is under `fedfleet.io/`, which kopf leaves out of the diff base
    anyway (it is the prefix of its own annotations); each reconciliation reads the action afresh."""
    return kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration", ignored_fields=["metadata.annotations"]
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    config: OperatorConfig | None = memo.get(MEMO_CONFIG)
    creds: KubeCredentials | None = memo.get(MEMO_CREDENTIALS)
    try:
        if config is None:  # `kopf run -m`: the environment, read now that the operator starts
            config = OperatorConfig.from_env()
        if creds is None:
            creds = kube_credentials.load(config.kubeconfig)
    except (ValueError, kube_credentials.CredentialsError) as exc:
        # Waiting cannot fix a bad setting or a missing cluster: stop the operator with the reason.
        raise kopf.PermanentError(str(exc)) from None
    metrics: OperatorMetrics | None = memo.get(MEMO_METRICS)
    if metrics is None:  # `kopf run -m`: metrics on a private registry, not served
        from prometheus_client import CollectorRegistry

        metrics = OperatorMetrics(CollectorRegistry())
    memo[MEMO_STATE] = OperatorState(config, creds, JobApi(KubeClient.connect(creds)), metrics)
    log.info("fedfleet operator ready (aggregator image %s)", config.aggregator_image)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    state: OperatorState | None = memo.get(MEMO_STATE)
    if state is not None:
        await state.api.client.close()


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    # kopf logs in only after the startup handlers have run, so the credentials they loaded are there.
    creds = _state(memo).credentials
    token = creds.bearer()
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=str(creds.ca_file) if creds.ca_file else None,
        scheme="Bearer" if token else None,
        token=token,
        certificate_path=str(creds.cert_file) if creds.cert_file else None,
        private_key_path=str(creds.key_file) if creds.key_file else None,
        default_namespace=creds.namespace,
    )


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
async def job_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    await reconcile_job(_state(memo), namespace or "default", name)


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_timeout=CANCELLATION_TIMEOUT, backoff=RETRY_DELAY * 6)
async def resync(namespace: str | None, name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Reconciles the job every `resync_seconds` while it exists. A daemon rather than a kopf timer: a timer's
    interval is fixed when its decorator runs, at import, before the operator's settings are known."""
    state = _state(memo)
    where = f"{namespace or 'default'}/{name}"
    delay = state.config.resync_seconds
    while not await stopped.wait(delay):
        delay = state.config.resync_seconds
        try:
            await reconcile_job(state, namespace or "default", name)
        except kopf.TemporaryError as exc:
            # As a timer would: the next attempt comes after the error's own delay.
            delay = exc.delay if exc.delay is not None else delay
            log.info("job %s: %s (retrying in %ss)", where, exc, delay)


@kopf.on.event("v1", "pods", labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_JOB: kopf.PRESENT})
async def pod_changed(namespace: str | None, labels: Mapping[str, str], memo: kopf.Memo, **_: Any) -> None:
    try:
        await reconcile_job(_state(memo), namespace or "default", labels[naming.LABEL_JOB])
    except kopf.TemporaryError as exc:
        log.info("job %s/%s: %s (the resync retries)", namespace, labels[naming.LABEL_JOB], exc)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
async def job_deleted(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    # The children go by garbage collection (owner references); the pod gets SIGTERM and its grace period.
    state = _state(memo)
    state.metrics.forget_job(namespace or "default", name)
    state.locks.pop((namespace or "default", name), None)


def _state(memo: kopf.Memo) -> OperatorState:
    state: OperatorState = memo[MEMO_STATE]
    return state


async def reconcile_job(state: OperatorState, namespace: str, name: str) -> None:
    lock = state.locks.setdefault((namespace, name), asyncio.Lock())
    async with lock, _outcome(state, namespace, name):
        job = await state.api.get_job(namespace, name)
        if job is None or "deletionTimestamp" in job.body["metadata"]:
            return
        try:
            observed = await state.api.observe(job)
            creds = None
            if "Secret" not in observed.present and not job.status().terminal:
                # Key generation is CPU work: keep it off the event loop.
                creds = await asyncio.to_thread(new_job_credentials, job.identity)
            plan = reconcile(job, observed, state.config, dt.datetime.now(dt.UTC), creds)
            await state.api.apply(job, plan)
        except ChildRequestFailed as failed:
            # Said on the job (status and Event), then handed to _outcome: retried unless it can never work.
            plan = refused(job, failed.failure, dt.datetime.now(dt.UTC))
            await state.api.apply(job, plan)
            _observed(state, job, plan)
            raise
        _observed(state, job, plan)


def _observed(state: OperatorState, job: JobRef, plan: Plan) -> None:
    """The job's metrics and log lines, from its status as the plan left it."""
    merged = {**(job.body.get("status") or {}), **plan.status}
    status = FederatedJobStatus.model_validate({k: v for k, v in merged.items() if v is not None})
    state.metrics.observe_job(job.namespace, job.name, int(job.body.get("spec", {}).get("rounds", 0)), status)
    for event in plan.events:
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        log.log(level, "job %s/%s: %s: %s", job.namespace, job.name, event.reason, event.message)


class _outcome:
    """Times a reconciliation and counts its outcome; turns API trouble into kopf.TemporaryError."""

    def __init__(self, state: OperatorState, namespace: str, name: str) -> None:
        self.state, self.where = state, f"{namespace}/{name}"
        self._timer = state.metrics.timed()

    async def __aenter__(self) -> None:
        self._timer.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        self._timer.__exit__(None, None, None)
        metrics = self.state.metrics
        if exc is None:
            metrics.outcome("success")
            return False
        if isinstance(exc, ChildRequestFailed) and exc.failure.permanent:
            # The job is Failed with the reason: retrying would only be refused again.
            metrics.outcome("error")
            return True
        if isinstance(exc, ChildRequestFailed):
            status = exc.failure.status
            metrics.outcome("requeue")
            # 403 (PodSecurity, RBAC, quota) waits for a person to act; the rest may pass on its own soon.
            delay = RETRY_DELAY * 6 if status == 403 else RETRY_DELAY
            raise kopf.TemporaryError(f"job {self.where}: {exc}", delay=delay) from exc
        if isinstance(exc, aiohttp.ClientError | TimeoutError) or (
            isinstance(exc, ApiError) and (exc.status in (409, 429) or exc.status >= 500)
        ):
            metrics.outcome("requeue")
            raise kopf.TemporaryError(f"job {self.where}: {exc}", delay=RETRY_DELAY) from exc
        if isinstance(exc, ApiError):
            metrics.outcome("error")
            raise kopf.TemporaryError(f"job {self.where}: {exc}", delay=RETRY_DELAY * 6) from exc
        metrics.outcome("error")
        return False


# ModelRollout handlers register with kopf when imported; `kopf run -m fedfleet.operator.handlers` loads them too.
from fedfleet.operator import rollout_handlers as rollout_handlers  # noqa: E402

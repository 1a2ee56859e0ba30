"""The only module of the operator that calls the Kubernetes API (kopf's own watching aside).

Plain JSON over aiohttp (already a kopf dependency): the builders produce API-shaped dicts, and a generated
client would only convert them back and forth. Every call has a timeout; errors surface as `ApiError` with
the HTTP status, so callers decide what is temporary. A refused request about one of a job's children surfaces
as `ChildRequestFailed`, which says which child and what the API answered (reconcile/child_failure.py), so the
job's status can say it too.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp

from fedfleet.api.federatedjob import API_GROUP, API_VERSION
from fedfleet.operator import naming
from fedfleet.operator.job import JobRef
from fedfleet.operator.kube_credentials import KubeCredentials
from fedfleet.operator.reconcile import EventSpec, Observed, Plan
from fedfleet.operator.reconcile.child_failure import Action, ChildFailure

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
COMPONENT = "fedfleet-operator"

# kind -> (API prefix, plural) of the children the operator creates.
KINDS: Mapping[str, tuple[str, str]] = {
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
# The fixed-name children besides the pod, and the name each has.
STATIC_CHILDREN: Mapping[str, Any] = {
    "ServiceAccount": naming.aggregator_name,
    "Role": naming.aggregator_name,
    "RoleBinding": naming.aggregator_name,
    "Secret": naming.secret_name,
    "ConfigMap": naming.aggregator_name,
    "PersistentVolumeClaim": naming.claim_name,
    "Service": naming.aggregator_name,
}


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        message = body.get("message", "") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.message = message


def object_path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def job_path(namespace: str, name: str, subresource: str = "") -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/federatedjobs/{name}"
    return f"{path}/{subresource}" if subresource else path


class KubeClient:
    def __init__(self, credentials: KubeCredentials, session: aiohttp.ClientSession) -> None:
        self._credentials = credentials
        self._session = session

    @classmethod
    def connect(cls, credentials: KubeCredentials) -> KubeClient:
        """Call from inside the running event loop (aiohttp binds the session to it)."""
        context = ssl.create_default_context(cafile=str(credentials.ca_file) if credentials.ca_file else None)
        if credentials.cert_file is not None and credentials.key_file is not None:
            context.load_cert_chain(str(credentials.cert_file), str(credentials.key_file))
        connector = aiohttp.TCPConnector(ssl=context, limit=16)
        return cls(credentials, aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT))

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", **params: str
    ) -> JSON:
        headers = {"Accept": "application/json"}
        token = self._credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = content_type
        url = self._credentials.server.rstrip("/") + path
        async with self._session.request(method, url, json=body, headers=headers, params=params or None) as resp:
            try:
                payload: Any = await resp.json(content_type=None)
            except ValueError:
                payload = await resp.text()
            if resp.status >= 400:
                raise ApiError(resp.status, method, path, payload)
            return payload if isinstance(payload, dict) else {}

    async def get(self, path: str) -> JSON | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def create(self, path: str, body: JSON) -> bool:
        """True when created, False when it already existed (a race with another reconcile, or a restart)."""
        try:
            await self.request("POST", path, body)
        except ApiError as err:
            if err.status == 409:
                return False
            raise
        return True

    async def merge_patch(self, path: str, patch: JSON) -> JSON:
        return await self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    async def delete(self, path: str, body: JSON | None = None) -> bool:
        try:
            await self.request("DELETE", path, body)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True


class ChildRequestFailed(Exception):
    """The API server refused a request about one of a job's children; `failure` says which and why."""

    def __init__(self, failure: ChildFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


class ForeignObject(ChildRequestFailed):
    """A child's name is taken by an object this job does not own."""


@contextmanager
def _about_child(action: Action, kind: str, name: str) -> Iterator[None]:
    """Turns an ApiError of the request made inside into ChildRequestFailed naming the child."""
    try:
        yield
    except ApiError as err:
        raise ChildRequestFailed(ChildFailure(action, kind, name, err.status, err.message)) from err


class JobApi:
    """What the handlers do to the cluster for one FederatedJob, in API calls."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get_job(self, namespace: str, name: str) -> JobRef | None:
        body = await self.client.get(job_path(namespace, name))
        return JobRef.from_body(body) if body is not None else None

    async def observe(self, job: JobRef) -> Observed:
        """The job's children as they are now. Children that another owner controls do not count as ours."""
        pod = await self._child("Pod", job, naming.aggregator_name(job.name))
        present: set[str] = set()
        configmap_data: dict[str, str] | None = None
        for kind, name_of in STATIC_CHILDREN.items():
            obj = await self._child(kind, job, name_of(job.name))
            if obj is None:
                continue
            present.add(kind)
            if kind == "ConfigMap":
                configmap_data = obj.get("data") or {}
        gateway = await self._child("Secret", job, naming.gateway_secret_name(job.name))
        return Observed(
            pod=pod, present=frozenset(present), configmap_data=configmap_data, gateway_secret=gateway is not None
        )

    async def _child(self, kind: str, job: JobRef, name: str) -> JSON | None:
        with _about_child("read", kind, name):
            obj = await self.client.get(object_path(kind, job.namespace, name))
        if obj is not None and not _owned_by(obj, job):
            # Left by an earlier job of the same name that garbage collection has not removed yet (or made by
            # hand): never adopt it; the caller retries until it is gone.
            message = "it exists but does not belong to this job (a deleted job's, not yet removed, or made by hand)"
            raise ForeignObject(ChildFailure("read", kind, name, None, message))
        return obj

    async def apply(self, job: JobRef, plan: Plan) -> None:
        """Carry out a plan: children first (the pod last, so its volumes exist), then status, then Events.
        A refused child stops it there (ChildRequestFailed): the rest would depend on it, and the status the plan
        meant to write would be wrong; `reconcile.refused` gives the plan that says what happened."""
        for obj in plan.create:
            with _about_child("create", obj["kind"], obj["metadata"]["name"]):
                await self.client.create(object_path(obj["kind"], job.namespace), obj)
        for obj in plan.update:
            path = object_path(obj["kind"], job.namespace, obj["metadata"]["name"])
            with _about_child("update", obj["kind"], obj["metadata"]["name"]):
                await self.client.merge_patch(path, {"data": obj.get("data")})
        if plan.delete_pod:
            with _about_child("delete", "Pod", naming.aggregator_name(job.name)):
                await self.delete_pod(job)
        if plan.status:
            await self.client.merge_patch(job_path(job.namespace, job.name, "status"), {"status": plan.status})
        for event in plan.events:
            await self.post_event(job, event)

    async def delete_pod(self, job: JobRef) -> None:
        """Delete the aggregator pod with its grace period: it gets SIGTERM and keeps its last checkpoint."""
        name = naming.aggregator_name(job.name)
        await self.client.delete(object_path("Pod", job.namespace, name), {"propagationPolicy": "Background"})

    async def post_event(self, job: JobRef, event: EventSpec) -> None:
        now = dt.datetime.now(dt.UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{job.name}.", "namespace": job.namespace},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": "FederatedJob",
                "name": job.name,
                "namespace": job.namespace,
                "uid": job.uid,
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self.client.create(f"/api/v1/namespaces/{job.namespace}/events", body)


def _owned_by(obj: JSON, job: JobRef) -> bool:
    return any(ref.get("uid") == job.uid for ref in obj["metadata"].get("ownerReferences", []))


ROLLOUT_PLURAL = "modelrollouts"


def rollout_path(namespace: str, name: str, subresource: str = "") -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{ROLLOUT_PLURAL}/{name}"
    return f"{path}/{subresource}" if subresource else path


class RolloutApi:
    """The calls of the ModelRollout controller: the rollout and its status, the FederatedJob it ships, and
    the fleet's ConfigMap and signing-key Secret in the gateway's namespace."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get_rollout(self, namespace: str, name: str) -> JSON | None:
        return await self.client.get(rollout_path(namespace, name))

    async def patch_status(self, namespace: str, name: str, status: JSON) -> JSON:
        return await self.client.merge_patch(rollout_path(namespace, name, "status"), {"status": status})

    async def get_job(self, namespace: str, name: str) -> JSON | None:
        return await self.client.get(job_path(namespace, name))

    async def get_configmap(self, namespace: str, name: str) -> JSON | None:
        return await self.client.get(object_path("ConfigMap", namespace, name))

    async def put_configmap(self, namespace: str, body: JSON) -> None:
        """Create, or replace at the resourceVersion in `body` (ApiError 409 when someone wrote it since)."""
        name = body["metadata"]["name"]
        if body["metadata"].get("resourceVersion") is None:
            await self.client.request("POST", object_path("ConfigMap", namespace), body)
        else:
            await self.client.request("PUT", object_path("ConfigMap", namespace, name), body)

    async def get_secret(self, namespace: str, name: str) -> JSON | None:
        return await self.client.get(object_path("Secret", namespace, name))

    async def create_secret(self, namespace: str, body: JSON) -> bool:
        return await self.client.create(object_path("Secret", namespace), body)

    async def post_event(self, rollout: JSON, type_: str, reason: str, message: str) -> None:
        meta = rollout["metadata"]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": "ModelRollout",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self.client.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)

"""The fleet gateway in the cluster, installed by the chart with the operator, on the real control plane.

A FederatedJob completes with a simulated fleet; its aggregator publishes the final model to the gateway pod
(over gRPC and TLS, with the publish-only token the operator copied into the job's namespace) and reports it in
`status.model`. A fleet view written by hand into its ConfigMap reaches the gateway through the API server;
a device with a fleet token is then assigned that model, downloads it from the gateway pod, and the bytes
verify against the signed release. Prometheus scrapes the gateway through its pod discovery.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from e2e_support import KubeApi, NodeAgent, cluster, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from operator_support import (
    GATEWAY,
    GATEWAY_GRPC_PORT,
    LAB_FLEET,
    OPERATOR_NAMESPACE,
    apply,
    condition,
    example_job,
    fleet,
    gateway_ip,
    get_job,
    job_files,
    new_namespace,
    running_pod,
    wait_job,
)

from fedfleet.models.artifact import ReleaseRecord, SignedRelease, digest_of
from fedfleet.models.canonical import format_time
from fedfleet.operator import naming
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from fedfleet.rollout.assignment import FleetView
from fedfleet.security.releases import sign_release, verify_download
from fedfleet.security.signing import SigningKey, TrustedKeys
from fedfleet.security.tokens import fleet_identity, issue_token

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]


def _secret(kube: KubeApi, name: str, key: str) -> bytes:
    data = kube.get(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets/{name}")["data"]
    return base64.b64decode(data[key])


def _ready_gateway_pod(kube: KubeApi) -> JSON | None:
    pods = kube.get(
        f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods", labelSelector="app.kubernetes.io/component=gateway"
    )["items"]
    for pod in pods:
        conditions = pod.get("status", {}).get("conditions", [])
        if "deletionTimestamp" not in pod["metadata"] and any(
            c["type"] == "Ready" and c["status"] == "True" for c in conditions
        ):
            return dict(pod)
    return None


class Device:
    """A device of the lab fleet talking to the gateway pod over TLS with its fleet token."""

    def __init__(self, target: str, ca_pem: bytes, token_key: bytes, device_id: str) -> None:
        self.target = target
        self.credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        token = issue_token(token_key, fleet_identity(LAB_FLEET), device_id, 600)
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def serving(self) -> int:
        async with grpc.aio.secure_channel(self.target, self.credentials) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="fedfleet.v1.Fleet"), timeout=10
            )
            return int(answer.status)

    async def assignment(self) -> pb.ModelAssignment | None:
        async with grpc.aio.secure_channel(self.target, self.credentials) as channel:
            try:
                answer: pb.ModelAssignment = await rpc.FleetStub(channel).GetAssignment(
                    pb.GetAssignmentRequest(attributes={"os": "linux"}), metadata=self.metadata, timeout=10
                )
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:  # no view yet: keep what it runs
                    return None
                raise
            return answer

    async def download(self, digest: str) -> bytes:
        parts: list[bytes] = []
        async with grpc.aio.secure_channel(self.target, self.credentials) as channel:
            stream = rpc.FleetStub(channel).DownloadArtifact(
                pb.DownloadArtifactRequest(digest=digest, offset=0), metadata=self.metadata, timeout=60
            )
            async for chunk in stream:
                assert chunk.offset == sum(len(p) for p in parts)
                parts.append(chunk.data)
        return b"".join(parts)


def test_the_gateway_pod_stores_a_published_model_and_serves_a_handwritten_fleet_view(
    control_plane: cluster.ControlPlane,
    kube: KubeApi,
    node_agent: NodeAgent,
    operator_release: dict[str, Any],
    prometheus: str,
    tmp_path: Path,
) -> None:
    # The gateway pod runs at its stable address and listens on it, with the config its init step wrote.
    pod = wait_for("the gateway pod Ready", lambda: _ready_gateway_pod(kube), timeout=60)
    ip = pod["status"]["podIP"]
    assert ip == gateway_ip(node_agent.pod_cidr)
    final = node_agent.pod_dir(pod["metadata"]["uid"]) / "etc/fedfleet/gateway/run/gateway.yaml"
    written = yaml.safe_load(final.read_text())
    assert written["listen"] == {"host": ip, "port": GATEWAY_GRPC_PORT} and written["http"]["host"] == ip
    ca = _secret(kube, f"{GATEWAY}-tls", "ca.crt")
    token_key = bytes.fromhex(_secret(kube, f"{GATEWAY}-token-key", "token.key").decode().strip())
    device = Device(f"{ip}:{GATEWAY_GRPC_PORT}", ca, token_key, "phone-17")
    assert asyncio.run(device.serving()) == health_pb2.HealthCheckResponse.SERVING

    # A job completes; its aggregator publishes the final model and the job's status names it.
    ns = new_namespace(kube, "e2e-gateway")
    job = "digits-fedavg"
    applied = apply(control_plane, ns, example_job(job))
    assert applied.returncode == 0, applied.stderr
    running_pod(kube, ns, job)
    endpoint = wait_job(kube, ns, job, "Ready", timeout=90)["status"]["endpoint"]
    # The operator's copy for the aggregator: the gateway's CA and its publish-only token, never the admin token.
    copy = kube.get(f"/api/v1/namespaces/{ns}/secrets/{naming.gateway_secret_name(job)}")
    assert set(copy["data"]) == {naming.CA_CERT, naming.GATEWAY_PUBLISH_TOKEN}, set(copy["data"])
    assert base64.b64decode(copy["data"][naming.CA_CERT]) == ca
    with fleet(endpoint, job_files(kube, ns, job, tmp_path / "device"), tmp_path / "fleet.log") as devices:
        wait_job(kube, ns, job, "Complete", timeout=180)
        assert devices.wait(timeout=60) == 0, (tmp_path / "fleet.log").read_text()[-2000:]

    def published() -> JSON | None:
        found = get_job(kube, ns, job)
        said = condition(found, "ModelPublished")
        if said is not None and said["status"] == "False":
            raise AssertionError(f"the model was not published: {said['message']}")
        return found if said is not None and "model" in found.get("status", {}) else None

    done = wait_for("status.model and ModelPublished", published, timeout=120)
    model = done["status"]["model"]
    assert model["round"] == 3 and model["architecture"] == "logistic"
    assert model["accuracy"] == pytest.approx(done["status"]["accuracy"])
    said = condition(done, "ModelPublished")
    assert said is not None and said["status"] == "True" and model["digest"] in said["message"]

    # The lab fleet's view, written by hand as the operator writes views: the model is its stable version.
    key = SigningKey.generate()
    record = ReleaseRecord(
        rollout="e2e/handwritten", revision=1, version=model["digest"], digest=model["digest"], size=model["size"],
        architecture=model["architecture"], key_id=key.key_id, issued_at=format_time(dt.datetime.now(dt.UTC)),
    )  # fmt: skip
    signed = sign_release(record, key)
    view = FleetView(LAB_FLEET, model["digest"], (), generation=1)
    kube.create(
        f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"fedfleet-fleet-{LAB_FLEET}", "namespace": OPERATOR_NAMESPACE},
            "data": {
                "view.json": json.dumps(view.to_dict()),
                "releases.json": json.dumps({model["digest"]: signed.to_dict()}),
            },
        },
    )

    # The gateway picks it up through the API server: the device is assigned the published model.
    assignment = wait_for("the gateway to serve the lab fleet's view", lambda: asyncio.run(device.assignment()))
    assert assignment.version == model["digest"] and assignment.role == pb.ModelAssignment.OUTSIDE
    assert (assignment.size, assignment.generation) == (model["size"], 1)
    release = SignedRelease(ReleaseRecord.from_canonical_bytes(assignment.release.record), assignment.release.signature)
    assert release == signed

    # It downloads the artifact from the gateway pod and verifies it as a device does before activating it.
    data = asyncio.run(device.download(model["digest"]))
    assert digest_of(data) == model["digest"] and len(data) == model["size"]
    artifact = verify_download(data, release, TrustedKeys([key.public()]))
    assert (artifact.metadata.job, artifact.metadata.round) == (f"{ns}/{job}", 3)

    # Prometheus finds the gateway through pod discovery and scrapes its metrics at the pod's address.
    def scraped() -> list[JSON] | None:
        promql = f'fedfleet_gateway_watch_streams{{pod="{pod["metadata"]["name"]}",component="gateway"}}'
        query = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=10) as answer:
            result: list[JSON] = json.loads(answer.read())["data"]["result"]
        return result or None

    (series,) = wait_for("Prometheus to scrape the gateway pod", scraped, timeout=60)
    assert series["metric"]["namespace"] == OPERATOR_NAMESPACE

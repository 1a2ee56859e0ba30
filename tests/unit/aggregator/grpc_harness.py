"""An aggregator in this process on 127.0.0.1 with TLS, and raw device clients, for the gRPC tests."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client import CollectorRegistry

from fedfleet.aggregator.app import AggregatorApp, Security
from fedfleet.api.aggregator_config import AggregatorConfig, Endpoint
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.api.manifest import parse_job
from fedfleet.device.client import Capabilities, DeviceClient, Task
from fedfleet.device.retry import Backoff
from fedfleet.proto import codec
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.security.certs import generate_ca, issue_server_cert
from fedfleet.security.tokens import issue_token, new_key

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: {name}
spec:
  rounds: {rounds}
  seed: 3
  model: {{architecture: logistic}}
  training: {{localEpochs: 1, batchSize: 0, learningRate: 0.1}}
  cohort: {{clientsPerRound: {clients}, overSelection: 1.0, roundDeadlineSeconds: 600}}
  evaluation: {{serverEvery: 0}}
  simulation: {{devices: 10, dataset: digits, testSamples: 100}}
"""


def make_job(name: str = "bad-inputs", rounds: int = 1, clients: int = 2, **spec: dict[str, Any]) -> FederatedJob:
    """The harness job; `spec` sections are merged over it (e.g. privacy=..., cohort={"minReports": 2})."""
    document = yaml.safe_load(JOB.format(name=name, rounds=rounds, clients=clients))
    for section, values in spec.items():
        document["spec"][section] = {**document["spec"].get(section, {}), **values}
    return parse_job(yaml.safe_dump(document))


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_pki() -> Pki:
    ca = generate_ca("test job CA")
    server = issue_server_cert(ca, ["localhost", "127.0.0.1"])
    return Pki(ca.cert_pem, server.cert_pem, server.key_pem)


class Harness:
    """One aggregator (gRPC + HTTP on free ports) running `job` with state under `state_dir`."""

    def __init__(self, job: FederatedJob, state_dir: Path, pki: Pki, **config: Any) -> None:
        self.job = job
        self.pki = pki
        self.key = new_key()
        self.registry = CollectorRegistry()
        settings: dict[str, Any] = {"settle_seconds": 0.2, "poll_seconds": 2.0, "linger_seconds": 0.0}
        settings.update(config)
        self.config = AggregatorConfig(
            job=job.metadata.name,
            listen=Endpoint(host="127.0.0.1", port=0),
            http=Endpoint(host="127.0.0.1", port=0),
            state_dir=state_dir,
            **settings,
        )
        security = Security(pki.cert_pem, pki.key_pem, pki.ca_pem, self.key)
        self.app = AggregatorApp(job, self.config, security, registry=self.registry)
        self.run_task: asyncio.Task[bool] | None = None
        self.clients: list[DeviceClient] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    async def start(self) -> None:
        await self.app.start()
        self.run_task = asyncio.create_task(self.app.run())

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        self.app.request_stop()
        if self.run_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.run_task, 10)
        await self.app.stop()

    async def finished(self, timeout: float = 20.0) -> bool:
        assert self.run_task is not None
        return await asyncio.wait_for(asyncio.shield(self.run_task), timeout)

    def token(self, device_id: str, job: str | None = None, ttl: float = 3600.0, key: bytes | None = None) -> str:
        return issue_token(key or self.key, job or self.job.metadata.name, device_id, ttl)

    def client(self, device_id: str, token: str | None = None) -> DeviceClient:
        client = DeviceClient(
            self.target,
            device_id=device_id,
            token=token if token is not None else self.token(device_id),
            root_certificates=self.pki.ca_pem,
            backoff=Backoff(initial=0.05, maximum=0.2),
            give_up_after=5.0,
        )
        self.clients.append(client)
        return client

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def running(job: FederatedJob, state_dir: Path, pki: Pki, **config: Any) -> AsyncIterator[Harness]:
    harness = Harness(job, state_dir, pki, **config)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.close()


async def join(client: DeviceClient, *, consent: bool = True, available: bool = True) -> None:
    await client.check_in(
        consent=consent, capabilities=Capabilities(train_examples=20, holdout_examples=0), available=available
    )


async def wait_task(client: DeviceClient, kind: str = "train", timeout: float = 10.0) -> Task:
    """Poll until a task of `kind` arrives."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        task = await client.next_task(wait_seconds=1.0)
        if task.kind == kind:
            return task
    raise AssertionError(f"{client.device_id} got no {kind} task in {timeout}s")


def messages(
    task: Task,
    payload: bytes,
    layout: codec.Layout,
    *,
    dtype: str = "float32",
    num_examples: int = 20,
    total_bytes: int | None = None,
    sha256: bytes | None = None,
    round_number: int | None = None,
    chunk_bytes: int = 1024,
    send_bytes: int | None = None,
    trailer: bool = True,
) -> Iterator[pb.UpdateChunk]:
    """An upload stream with every field open to tampering."""
    header = pb.UpdateHeader(
        round=task.round if round_number is None else round_number,
        model_version=task.model_version,
        num_examples=num_examples,
        train_loss=0.5,
        dtype=dtype,
        layout=codec.layout_to_proto(layout),
        total_bytes=len(payload) if total_bytes is None else total_bytes,
    )
    yield pb.UpdateChunk(header=header)
    body = payload if send_bytes is None else payload[:send_bytes]
    for part in codec.split(body, chunk_bytes):
        yield pb.UpdateChunk(data=bytes(part))
    if trailer:
        digest = codec.sha256(payload) if sha256 is None else sha256
        yield pb.UpdateChunk(trailer=pb.UpdateTrailer(sha256=digest))


def delta(dim: int, value: float, dtype: str = "float32") -> np.ndarray:
    """A recognisable update: `value` everywhere, with a ramp so coordinates differ."""
    ramp = np.linspace(-1.0, 1.0, dim)
    return (value + 0.01 * ramp).astype(codec.DTYPES[dtype])


def layout_size(layout: codec.Layout) -> int:
    return sum(math.prod(s) for _, s in layout)

"""The device SDK: what an edge device embeds to take part in federated jobs over gRPC (fedfleet.v1).

    async with DeviceClient("aggregator:443", device_id=..., token=..., root_certificates=ca_pem) as client:
        await client.check_in(consent=True, capabilities=Capabilities(train_examples=600))
        task = await client.next_task(available=True)
        if task.kind == "train":
            model = await client.download_model(task.model_version)
            ...train from model.weights...
            await client.upload_update(task, delta, num_examples, train_loss, model.layout)

`DeviceAgent` (fedfleet.device.agent) runs that loop for you. Every call retries transient failures
(UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED) with exponential backoff and full jitter, never past the task's
deadline; other failures raise `AggregatorError` with the status code, the server's message and its
machine-readable reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from fedfleet.models.vector import Vector
from fedfleet.proto import codec, refusals
from fedfleet.proto.task_kinds import TaskKind
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.proto.v1 import aggregator_pb2_grpc as pb_grpc

from .retry import Backoff

T = TypeVar("T")
log = logging.getLogger("fedfleet.device")

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})
#: Extra time a long-poll call gets beyond the wait it asks for, before the client gives up on it.
POLL_MARGIN_SECONDS = 5.0
#: One attempt of a short call. Calls wait for the connection (wait_for_ready) instead of failing fast while
#: the channel is down: a channel whose server restarted can keep failing fast on its stale error for a while.
CALL_TIMEOUT_SECONDS = 10.0


class AggregatorError(Exception):
    """A call the aggregator refused (or that failed for good). `reason` is the server's machine-readable reason
    (fedfleet.proto.refusals.Refusal), None when it gave none or one this SDK does not know."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: refusals.Refusal | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES

    @classmethod
    def from_rpc(cls, err: grpc.aio.AioRpcError) -> AggregatorError:
        reason = None
        for key, value in err.trailing_metadata() or ():
            if key == refusals.ERROR_KEY and isinstance(value, str):
                reason = refusals.parse(value)
        return cls(err.code(), err.details() or "", reason)


@dataclass(frozen=True)
class Capabilities:
    train_examples: int = 0
    holdout_examples: int = 0
    platform: str = "python"


@dataclass(frozen=True)
class CheckInResult:
    job: str
    next_round: int
    total_rounds: int
    job_done: bool
    poll_seconds: float


@dataclass(frozen=True)
class TrainingConfig:
    local_epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float


@dataclass(frozen=True)
class Task:
    kind: TaskKind
    next_round: int
    round: int = 0
    model_version: int = 0
    training: TrainingConfig | None = None
    deadline: float = float("inf")  # on the client's monotonic clock
    secure: pb.SecureAggregationTask | None = None  # set: the update goes through secure aggregation

    def seconds_left(self, now: float | None = None) -> float:
        return self.deadline - (time.monotonic() if now is None else now)


@dataclass(frozen=True)
class Model:
    version: int
    weights: Vector
    layout: codec.Layout


@dataclass(frozen=True)
class UploadReceipt:
    accepted: bool  # False: the round had already closed or filled (late)
    round: int
    next_round: int


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", codec.MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", codec.MAX_MESSAGE_BYTES),
        # Our own backoff decides when to retry; the channel should not sit out minutes in between.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # Each device has its own connection, as separate devices would (no sharing between channels).
        ("grpc.use_local_subchannel_pool", 1),
        *extra,
    ]


class DeviceClient:
    def __init__(
        self,
        target: str,
        *,
        device_id: str,
        token: str,
        root_certificates: bytes,
        backoff: Backoff | None = None,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        give_up_after: float = 300.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.device_id = device_id
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._backoff = backoff or Backoff()
        self._chunk_bytes = chunk_bytes
        self.give_up_after = give_up_after
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options(options))
        self.stub = pb_grpc.AggregatorStub(self._channel)
        self.retries = 0  # transient failures retried so far
        self.check_in_seconds: list[float] = []  # latency of each successful check-in, retries included

    async def __aenter__(self) -> DeviceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def check_in(
        self, *, consent: bool, capabilities: Capabilities, available: bool = True, for_round: int = 0
    ) -> CheckInResult:
        request = pb.CheckInRequest(
            device_id=self.device_id,
            consent=consent,
            capabilities=pb.Capabilities(
                train_examples=capabilities.train_examples,
                holdout_examples=capabilities.holdout_examples,
                platform=capabilities.platform,
            ),
            availability=pb.Availability(available=available, for_round=for_round),
        )

        async def call() -> pb.CheckInResponse:
            response: pb.CheckInResponse = await self.stub.CheckIn(
                request, metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS, wait_for_ready=True
            )
            return response

        started = time.perf_counter()
        r = await self._retrying(call)
        self.check_in_seconds.append(time.perf_counter() - started)
        return CheckInResult(r.job, r.next_round, r.total_rounds, r.job_done, r.poll_seconds)

    async def next_task(self, *, available: bool = True, for_round: int = 0, wait_seconds: float = 10.0) -> Task:
        if not (math.isfinite(wait_seconds) and wait_seconds >= 0):
            raise ValueError(f"wait_seconds must be a finite number of seconds >= 0, got {wait_seconds}")
        request = pb.GetTaskRequest(
            availability=pb.Availability(available=available, for_round=for_round), wait_seconds=wait_seconds
        )

        async def call() -> pb.Task:
            task: pb.Task = await self.stub.GetTask(
                request, metadata=self._metadata, timeout=wait_seconds + POLL_MARGIN_SECONDS, wait_for_ready=True
            )
            return task

        t = await self._retrying(call)
        training = None
        if t.HasField("training"):
            tc = t.training
            training = TrainingConfig(tc.local_epochs, tc.batch_size, tc.learning_rate, tc.proximal_mu)
        deadline = (
            time.monotonic() + t.deadline_seconds if t.kind in (pb.Task.TRAIN, pb.Task.EVALUATE) else float("inf")
        )
        secure = t.secure_aggregation if t.HasField("secure_aggregation") else None
        return Task(_task_kind(t.kind), t.next_round, t.round, t.model_version, training, deadline, secure)

    async def download_model(self, version: int, deadline: float | None = None) -> Model:
        async def call() -> Model:
            stream = self.stub.DownloadModel(
                pb.DownloadModelRequest(model_version=version),
                metadata=self._metadata,
                timeout=self._timeout(deadline),
                wait_for_ready=True,
            )
            header: pb.ModelHeader | None = None
            buffer = bytearray()
            async for chunk in stream:
                if chunk.WhichOneof("part") == "header":
                    header = chunk.header
                    buffer = bytearray()
                else:
                    buffer += chunk.data
            if header is None or len(buffer) != header.total_bytes or codec.sha256(buffer) != header.sha256:
                # Damaged in transit: worth another try, like a dropped connection.
                raise AggregatorError(
                    grpc.StatusCode.ABORTED, "model download was incomplete or corrupted", refusals.Refusal.CORRUPT
                )
            weights = np.asarray(codec.decode_vector(buffer, header.dtype), dtype=np.float32)
            return Model(header.model_version, weights, codec.layout_from_proto(header.layout))

        return await self._retrying(call, deadline)

    async def upload_update(
        self,
        task: Task,
        delta: Vector,
        num_examples: int,
        train_loss: float,
        layout: codec.Layout,
    ) -> UploadReceipt:
        """Send an update for a TRAIN task in chunks with its SHA-256; retried until the task's deadline."""
        payload = codec.encode_vector(delta)
        header = pb.UpdateHeader(
            round=task.round,
            model_version=task.model_version,
            num_examples=num_examples,
            train_loss=train_loss,
            dtype=codec.WIRE_DTYPE,
            layout=codec.layout_to_proto(layout),
            total_bytes=len(payload),
        )
        deadline = task.deadline if task.deadline != float("inf") else None

        async def call() -> pb.UploadResponse:
            return await self.send_upload(
                update_messages(header, payload, self._chunk_bytes), timeout=self._timeout(deadline)
            )

        r = await self._retrying(call, deadline)
        return UploadReceipt(r.result == pb.UploadResponse.ACCEPTED, r.round, r.next_round)

    async def send_upload(
        self, messages: Iterator[pb.UpdateChunk] | AsyncIterator[pb.UpdateChunk], timeout: float | None = None
    ) -> pb.UploadResponse:
        """One attempt at an upload of exactly these messages (no retry); for tests and custom encodings."""
        try:
            response: pb.UploadResponse = await self.stub.UploadUpdate(
                messages, metadata=self._metadata, timeout=timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as err:
            raise AggregatorError.from_rpc(err) from None
        return response

    async def report_evaluation(self, task: Task, *, num_examples: int, loss: float, accuracy: float) -> bool:
        request = pb.EvaluationReport(
            model_version=task.model_version, num_examples=num_examples, loss=loss, accuracy=accuracy
        )

        async def call() -> pb.ReportEvaluationResponse:
            r: pb.ReportEvaluationResponse = await self.stub.ReportEvaluation(
                request, metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS, wait_for_ready=True
            )
            return r

        deadline = task.deadline if task.deadline != float("inf") else None
        return (await self._retrying(call, deadline)).accepted

    # ---- secure aggregation: each stage call returns when the server has closed that stage ---------------

    async def advertise_keys(self, request: pb.AdvertiseKeysRequest, deadline: float) -> pb.KeyBroadcast:
        return await self._stage_call(self.stub.AdvertiseKeys, request, deadline)

    async def share_keys(self, request: pb.ShareKeysRequest, deadline: float) -> pb.ShareBundle:
        return await self._stage_call(self.stub.ShareKeys, request, deadline)

    async def upload_masked_input(
        self, round_number: int, masked: bytes, complaints: Sequence[int], deadline: float
    ) -> pb.UnmaskRequest:
        """Send the masked input in chunks with its SHA-256; returns the server's unmask request once the
        masked-input stage has closed."""
        header = pb.MaskedInputHeader(round=round_number, total_bytes=len(masked), complaints=list(complaints))

        async def call() -> pb.UnmaskRequest:
            try:
                reply: pb.UnmaskRequest = await self.stub.UploadMaskedInput(
                    masked_input_messages(header, masked, self._chunk_bytes),
                    metadata=self._metadata,
                    timeout=self._timeout(deadline),
                    wait_for_ready=True,
                )
            except grpc.aio.AioRpcError as err:
                raise AggregatorError.from_rpc(err) from None
            return reply

        return await self._retrying(call, deadline)

    async def unmask(self, response: pb.UnmaskResponse, deadline: float) -> pb.UnmaskAck:
        return await self._stage_call(self.stub.Unmask, response, deadline)

    async def _stage_call(self, method: Callable[..., Awaitable[T]], request: Any, deadline: float) -> T:
        """One secure-aggregation call, resent after a lost connection (the server takes an identical message
        twice as once) until `deadline`."""

        async def call() -> T:
            return await method(request, metadata=self._metadata, timeout=self._timeout(deadline), wait_for_ready=True)

        return await self._retrying(call, deadline)

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.give_up_after
        return max(0.001, deadline - time.monotonic())

    async def _retrying(self, call: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
        """Run `call`, retrying transient failures with backoff until `deadline` or `give_up_after`."""
        give_up = time.monotonic() + self.give_up_after
        stop = give_up if deadline is None else min(deadline, give_up)
        delays = self._backoff.delays()
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as err:
                error = AggregatorError.from_rpc(err)
            except AggregatorError as err:
                error = err
            if not error.transient:
                raise error
            delay = next(delays)
            log.debug("%s: %s (retry in %.2fs)", self.device_id, error, delay)
            if time.monotonic() + delay >= stop:
                raise error
            self.retries += 1
            await asyncio.sleep(delay)


async def update_messages(
    header: pb.UpdateHeader, payload: bytes | memoryview, chunk_bytes: int
) -> AsyncIterator[pb.UpdateChunk]:
    """The upload stream: the header, the payload in chunks, and the SHA-256 of the payload as the trailer.

    The digest is computed in a worker thread while the chunks are being sent (hashlib releases the GIL), so
    hashing overlaps sending instead of delaying the first byte.
    """
    yield pb.UpdateChunk(header=header)
    digest = hashlib.sha256()
    hashing = asyncio.create_task(asyncio.to_thread(_hash_all, digest, payload, chunk_bytes))
    try:
        for part in codec.split(payload, chunk_bytes):
            yield pb.UpdateChunk(data=bytes(part))
        await hashing
    finally:
        hashing.cancel()
    yield pb.UpdateChunk(trailer=pb.UpdateTrailer(sha256=digest.digest()))


async def masked_input_messages(
    header: pb.MaskedInputHeader, payload: bytes, chunk_bytes: int
) -> AsyncIterator[pb.MaskedInputChunk]:
    """A masked input's stream: the header, the ring words in chunks, and their SHA-256 as the trailer."""
    yield pb.MaskedInputChunk(header=header)
    for part in codec.split(payload, chunk_bytes):
        yield pb.MaskedInputChunk(data=bytes(part))
    yield pb.MaskedInputChunk(trailer=pb.UpdateTrailer(sha256=hashlib.sha256(payload).digest()))


def _hash_all(digest: Any, payload: bytes | memoryview, chunk_bytes: int) -> None:
    for part in codec.split(payload, chunk_bytes):
        digest.update(part)


def _task_kind(value: int) -> TaskKind:
    try:
        return TaskKind.from_proto(value)
    except ValueError:
        return TaskKind.WAIT  # a kind from a newer server: wait and ask again rather than fail

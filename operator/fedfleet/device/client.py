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
deadline; a try that ran out of time is followed by one that waits longer (a slow aggregator is slow, not
gone). Only an aggregator that answered nothing for `give_up_after` seconds in a row ends a call with
`AggregatorUnreachable` (fedfleet.device.reachability); other failures raise `AggregatorError` with the
status code, the server's message and its machine-readable reason.
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

from .reachability import UNANSWERED_CODES, Reachability, TryTimeouts
from .retry import Backoff

T = TypeVar("T")
log = logging.getLogger("fedfleet.device")

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})
#: The first try of a short call waits this long for its answer, and a long-poll this long beyond the wait it
#: asks for; each try that runs out of time doubles it. Calls wait for the connection (wait_for_ready) instead
#: of failing fast while the channel is down: a channel whose server restarted can keep failing fast on its
#: stale error for a while, and a call already waiting goes out the moment the aggregator is back.
CALL_TIMEOUT_SECONDS = 10.0
#: The shortest deadline a try is given, so that a try never starts already expired.
MIN_TRY_SECONDS = 0.001


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


class AggregatorUnreachable(AggregatorError):
    """The aggregator answered nothing, not even a refusal, for the client's whole `give_up_after`: the one
    transient failure that is final. `last` is the error of the last try."""

    def __init__(self, target: str, silent_seconds: float, give_up_after: float, last: AggregatorError) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            f"no answer from the aggregator at {target} for {silent_seconds:.0f}s (the limit is "
            f"{give_up_after:.0f}s); the last try ended in {last}",
        )
        self.target = target
        self.silent_seconds = silent_seconds
        self.last = last


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
        call_timeout: float = CALL_TIMEOUT_SECONDS,
        options: Sequence[tuple[str, Any]] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`give_up_after`: seconds the aggregator may answer nothing at all before a call gives up (it may be
        restarting); `call_timeout`: how long the first try of a short call waits (see CALL_TIMEOUT_SECONDS);
        `clock` and `sleep` (monotonic seconds) are injectable for tests."""
        if not call_timeout > 0:
            raise ValueError(f"call_timeout must be greater than 0 seconds, got {call_timeout}")
        self.target = target
        self.device_id = device_id
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._backoff = backoff or Backoff()
        self._chunk_bytes = chunk_bytes
        self.call_timeout = call_timeout
        self._clock = clock
        self._sleep = sleep
        self.reachability = Reachability(give_up_after, clock)
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options(options))
        self.stub = pb_grpc.AggregatorStub(self._channel)
        self.retries = 0  # transient failures retried so far
        self.retried: dict[str, int] = {}  # the same, by status code name
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

    @property
    def give_up_after(self) -> float:
        return self.reachability.give_up_after

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

        async def call(timeout: float) -> pb.CheckInResponse:
            response: pb.CheckInResponse = await self.stub.CheckIn(
                request, metadata=self._metadata, timeout=timeout, wait_for_ready=True
            )
            return response

        started = time.perf_counter()
        r = await self._retrying(call, expected=0.0)
        self.check_in_seconds.append(time.perf_counter() - started)
        return CheckInResult(r.job, r.next_round, r.total_rounds, r.job_done, r.poll_seconds)

    async def next_task(self, *, available: bool = True, for_round: int = 0, wait_seconds: float = 10.0) -> Task:
        if not (math.isfinite(wait_seconds) and wait_seconds >= 0):
            raise ValueError(f"wait_seconds must be a finite number of seconds >= 0, got {wait_seconds}")
        request = pb.GetTaskRequest(
            availability=pb.Availability(available=available, for_round=for_round), wait_seconds=wait_seconds
        )

        async def call(timeout: float) -> pb.Task:
            task: pb.Task = await self.stub.GetTask(
                request, metadata=self._metadata, timeout=timeout, wait_for_ready=True
            )
            return task

        t = await self._retrying(call, expected=wait_seconds)
        training = None
        if t.HasField("training"):
            tc = t.training
            training = TrainingConfig(tc.local_epochs, tc.batch_size, tc.learning_rate, tc.proximal_mu)
        deadline = self._clock() + t.deadline_seconds if t.kind in (pb.Task.TRAIN, pb.Task.EVALUATE) else float("inf")
        secure = t.secure_aggregation if t.HasField("secure_aggregation") else None
        return Task(_task_kind(t.kind), t.next_round, t.round, t.model_version, training, deadline, secure)

    async def download_model(self, version: int, deadline: float | None = None) -> Model:
        async def call(timeout: float) -> Model:
            stream = self.stub.DownloadModel(
                pb.DownloadModelRequest(model_version=version),
                metadata=self._metadata,
                timeout=timeout,
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

        async def call(timeout: float) -> pb.UploadResponse:
            return await self.send_upload(update_messages(header, payload, self._chunk_bytes), timeout=timeout)

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

        async def call(timeout: float) -> pb.ReportEvaluationResponse:
            r: pb.ReportEvaluationResponse = await self.stub.ReportEvaluation(
                request, metadata=self._metadata, timeout=timeout, wait_for_ready=True
            )
            return r

        deadline = task.deadline if task.deadline != float("inf") else None
        return (await self._retrying(call, deadline, expected=0.0)).accepted

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

        async def call(timeout: float) -> pb.UnmaskRequest:
            try:
                reply: pb.UnmaskRequest = await self.stub.UploadMaskedInput(
                    masked_input_messages(header, masked, self._chunk_bytes),
                    metadata=self._metadata,
                    timeout=timeout,
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

        async def call(timeout: float) -> T:
            return await method(request, metadata=self._metadata, timeout=timeout, wait_for_ready=True)

        return await self._retrying(call, deadline)

    async def _retrying(
        self, call: Callable[[float], Awaitable[T]], deadline: float | None = None, *, expected: float | None = None
    ) -> T:
        """Run `call(timeout)` until it is answered, trying again after transient failures.

        `expected` is what the server may take by design (0 for a short call, the wait of a long-poll): each
        try then waits that plus a margin that doubles after every try that ran out of time. None: a try waits
        until `deadline`. Gives up with the last error once `deadline` has passed, and with
        AggregatorUnreachable once the aggregator has answered nothing for `give_up_after`."""
        timeouts = TryTimeouts(expected, self.call_timeout) if expected is not None else None
        delays = self._backoff.delays()
        while True:
            started = self._clock()
            try:
                result = await call(self._try_timeout(timeouts, deadline))
            except grpc.aio.AioRpcError as err:
                error = AggregatorError.from_rpc(err)
            except AggregatorError as err:
                error = err
            else:
                self.reachability.answered()
                return result
            if error.code in UNANSWERED_CODES and error.reason is None:
                self.reachability.unanswered(started)
            else:
                self.reachability.answered()  # a refusal (it carries a reason), a damaged download: it is there
            if not error.transient:
                raise error
            if self.reachability.exhausted():
                raise AggregatorUnreachable(
                    self.target, self.reachability.silent_for(), self.give_up_after, error
                ) from None
            if timeouts is not None and error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                timeouts.ran_out()
            # Tries start at most one backoff delay apart: a try that already waited (for the connection to
            # come back, for a slow answer) has served its delay, and the next one goes out at once.
            delay = max(0.0, next(delays) - (self._clock() - started))
            if deadline is not None and self._clock() + delay >= deadline:
                raise error
            delay = min(delay, self.reachability.patience_left())
            self.retries += 1
            self.retried[error.code.name] = self.retried.get(error.code.name, 0) + 1
            log.debug("%s: %s (retry in %.2fs)", self.device_id, error, delay)
            await self._sleep(delay)

    def _try_timeout(self, timeouts: TryTimeouts | None, deadline: float | None) -> float:
        """How long the next try may wait: its own timeout, never past the call's deadline, nor past the
        moment the aggregator's silence would reach the limit."""
        bounds = [self.reachability.patience_left()]
        if timeouts is not None:
            bounds.append(timeouts.next())
        if deadline is not None:
            bounds.append(deadline - self._clock())
        return max(MIN_TRY_SECONDS, min(bounds))


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

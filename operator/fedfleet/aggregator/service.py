"""The gRPC servicer of fedfleet.v1.Aggregator: authentication, then one call into the device hub.

Thin on purpose: domain errors become status codes here and nowhere else, so the hub and the
engine stay free of gRPC. Every refusal carries a one-line message and, in the trailing metadata
`fedfleet-error`, a stable machine-readable reason the device SDK branches on (fedfleet.proto.refusals: the
domain's reasons are translated into the protocol's here).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from fedfleet.engine.round import UpdateRejected
from fedfleet.engine.types import Outcome, RejectReason
from fedfleet.proto import codec
from fedfleet.proto.refusals import ERROR_KEY, Refusal
from fedfleet.proto.task_kinds import TaskKind
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.security.tokens import TokenError, TokenProblem, TokenVerifier

from .hub import BadReport, DeviceHub, DeviceUnknown, ModelVersionGone, TaskView
from .secure_round import SecureRound, SecureRoundRefused

R = TypeVar("R")

REJECTION_CODES: dict[RejectReason, grpc.StatusCode] = {
    RejectReason.NOT_IN_COHORT: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.WRONG_ROUND: grpc.StatusCode.OUT_OF_RANGE,
    RejectReason.DUPLICATE: grpc.StatusCode.ALREADY_EXISTS,
    RejectReason.SHAPE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.DTYPE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.LAYOUT: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.NON_FINITE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.BAD_WEIGHT: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RejectReason.CORRUPT: grpc.StatusCode.DATA_LOSS,
    RejectReason.ROUND_CLOSED: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.SECURE_ONLY: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.SECAGG_MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.STALLED: grpc.StatusCode.DEADLINE_EXCEEDED,
    RejectReason.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

#: The protocol's name for each rejection of an update. Spelled out rather than derived from the engine's
#: values: the wire strings must stay as they are even if the engine's labels change.
REJECTION_REFUSALS: dict[RejectReason, Refusal] = {
    RejectReason.NOT_IN_COHORT: Refusal.NOT_IN_COHORT,
    RejectReason.WRONG_ROUND: Refusal.WRONG_ROUND,
    RejectReason.DUPLICATE: Refusal.DUPLICATE,
    RejectReason.SHAPE: Refusal.SHAPE,
    RejectReason.DTYPE: Refusal.DTYPE,
    RejectReason.LAYOUT: Refusal.LAYOUT,
    RejectReason.NON_FINITE: Refusal.NON_FINITE,
    RejectReason.BAD_WEIGHT: Refusal.BAD_WEIGHT,
    RejectReason.TOO_LARGE: Refusal.TOO_LARGE,
    RejectReason.CORRUPT: Refusal.CORRUPT,
    RejectReason.ROUND_CLOSED: Refusal.ROUND_CLOSED,
    RejectReason.SECURE_ONLY: Refusal.SECURE_ONLY,
    RejectReason.SECAGG_MALFORMED: Refusal.SECAGG_MALFORMED,
    RejectReason.STALLED: Refusal.STALLED,
    RejectReason.BUSY: Refusal.BUSY,
}

#: Secure-aggregation refusals (SecureRoundRefused.reason). Only `secagg_malformed` drops the device for
#: misbehaving; the others say the device cannot (any longer) take part in this round's stage.
SECURE_CODES: dict[Refusal, grpc.StatusCode] = {
    Refusal.WRONG_ROUND: grpc.StatusCode.OUT_OF_RANGE,
    Refusal.NOT_IN_COHORT: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.SECAGG_OFF: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.SECAGG_MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Refusal.SECAGG_EXCLUDED: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.SECAGG_STAGE_CLOSED: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.SECAGG_ABORTED: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.ROUND_CLOSED: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.CORRUPT: grpc.StatusCode.DATA_LOSS,
}

TOKEN_CODES: dict[TokenProblem, grpc.StatusCode] = {
    TokenProblem.MISSING: grpc.StatusCode.UNAUTHENTICATED,
    TokenProblem.MALFORMED: grpc.StatusCode.UNAUTHENTICATED,
    TokenProblem.BAD_SIGNATURE: grpc.StatusCode.UNAUTHENTICATED,
    TokenProblem.WRONG_JOB: grpc.StatusCode.PERMISSION_DENIED,
    TokenProblem.EXPIRED: grpc.StatusCode.PERMISSION_DENIED,
}

TOKEN_REFUSALS: dict[TokenProblem, Refusal] = {
    TokenProblem.MISSING: Refusal.TOKEN_MISSING,
    TokenProblem.MALFORMED: Refusal.TOKEN_MALFORMED,
    TokenProblem.BAD_SIGNATURE: Refusal.TOKEN_BAD_SIGNATURE,
    TokenProblem.WRONG_JOB: Refusal.TOKEN_WRONG_JOB,
    TokenProblem.EXPIRED: Refusal.TOKEN_EXPIRED,
}


#: Refusals decided from an upload's header, for a device that follows the protocol but is out of step (its
#: round closed, the job runs secure aggregation). Before refusing one of these the server reads the rest of
#: the stream, bounded below: a grpc aio client still writing when the server ends the call may report
#: "INTERNAL: Internal error from Core" instead of the server's status (grpc/grpc#36066), and the device
#: must learn the reason. Refusals of hostile streams (busy, stalled, too large, corrupt) are not drained.
DRAINED_REJECTIONS = frozenset(
    {
        RejectReason.NOT_IN_COHORT,
        RejectReason.WRONG_ROUND,
        RejectReason.DUPLICATE,
        RejectReason.ROUND_CLOSED,
        RejectReason.SECURE_ONLY,
    }
)
#: How long and how much the server reads of a stream it is going to refuse: one update's worth, briefly.
DRAIN_SECONDS = 5.0


async def drain(chunks: AsyncIterator[Any], max_bytes: int, seconds: float = DRAIN_SECONDS) -> bool:
    """Read what the client still sends, up to `max_bytes` and `seconds`; True when it half-closed in time."""

    async def read() -> bool:
        received = 0
        async for chunk in chunks:
            received += chunk.ByteSize()
            if received > max_bytes:
                return False
        return True

    try:
        return await asyncio.wait_for(read(), seconds)
    except (TimeoutError, grpc.RpcError, StopAsyncIteration):
        return False


async def _abort(context: Any, code: grpc.StatusCode, message: str, reason: Refusal) -> NoReturn:
    await context.abort(code, message, trailing_metadata=((ERROR_KEY, reason.value),))
    raise AssertionError("context.abort returned")  # it always raises


class AggregatorService:
    """Implements fedfleet.v1.Aggregator (registered with `add_AggregatorServicer_to_server`)."""

    def __init__(self, coordinator: DeviceHub, verifier: TokenVerifier, chunk_bytes: int) -> None:
        self._coordinator = coordinator
        self._verifier = verifier
        self._chunk_bytes = chunk_bytes

    async def _device(self, context: Any) -> str:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, rest = value.partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" else None
        try:
            return self._verifier.verify(token).device_id
        except TokenError as err:
            await _abort(context, TOKEN_CODES[err.problem], err.message, TOKEN_REFUSALS[err.problem])

    def _observe(self, method: str, started: float) -> None:
        self._coordinator.metrics.rpc_seconds.labels(method).observe(time.perf_counter() - started)

    async def CheckIn(self, request: pb.CheckInRequest, context: Any) -> pb.CheckInResponse:
        started = time.perf_counter()
        device_id = await self._device(context)
        if request.device_id != device_id:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"device_id {request.device_id!r} does not match the token's device {device_id!r}",
                Refusal.DEVICE_MISMATCH,
            )
        coordinator = self._coordinator
        coordinator.check_in(device_id, request)
        self._observe("CheckIn", started)
        return pb.CheckInResponse(
            job=coordinator.job_name,
            next_round=coordinator.next_round,
            total_rounds=coordinator.spec.rounds,
            job_done=coordinator.done,
            poll_seconds=coordinator.settings.poll_seconds,
        )

    async def GetTask(self, request: pb.GetTaskRequest, context: Any) -> pb.Task:
        device_id = await self._device(context)
        wait = request.wait_seconds
        if not (math.isfinite(wait) and wait >= 0):
            # NaN would make the long-poll's end NaN: a poll that never answers and holds its device's place.
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"wait_seconds must be a finite number of seconds >= 0, got {wait}",
                Refusal.BAD_REQUEST,
            )
        try:
            task = await self._coordinator.next_task(device_id, request.availability, request.wait_seconds)
        except DeviceUnknown as err:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(err), Refusal.NOT_CHECKED_IN)
        return self._task_message(task)

    def _task_message(self, task: TaskView) -> pb.Task:
        message = pb.Task(
            kind=task.kind.to_proto(),
            round=task.round,
            model_version=task.model_version,
            deadline_seconds=task.deadline_seconds,
            next_round=task.next_round,
        )
        if task.kind == TaskKind.TRAIN:
            spec = self._coordinator.spec
            if task.secure is not None:
                message.secure_aggregation.CopyFrom(task.secure)
            message.training.CopyFrom(
                pb.TrainingConfig(
                    local_epochs=spec.training.local_epochs,
                    batch_size=spec.training.batch_size,
                    learning_rate=spec.training.learning_rate,
                    proximal_mu=spec.proximal_mu,
                )
            )
        return message

    async def DownloadModel(self, request: pb.DownloadModelRequest, context: Any) -> AsyncIterator[pb.ModelChunk]:
        await self._device(context)
        try:
            snapshot = self._coordinator.model(request.model_version)
        except ModelVersionGone as err:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(err), Refusal.MODEL_VERSION_GONE)
        yield pb.ModelChunk(
            header=pb.ModelHeader(
                model_version=snapshot.version,
                dtype=codec.WIRE_DTYPE,
                layout=codec.layout_to_proto(self._coordinator.layout),
                total_bytes=len(snapshot.payload),
                sha256=snapshot.sha256,
            )
        )
        sent = self._coordinator.metrics.bytes_sent
        for part in codec.split(snapshot.payload, self._chunk_bytes):
            yield pb.ModelChunk(data=bytes(part))
            sent.inc(len(part))

    async def UploadUpdate(self, request_iterator: AsyncIterator[pb.UpdateChunk], context: Any) -> pb.UploadResponse:
        started = time.perf_counter()
        device_id = await self._device(context)
        try:
            result = await self._coordinator.upload(device_id, request_iterator)
        except UpdateRejected as err:
            refusal = REJECTION_REFUSALS[err.reason]
            if err.reason in DRAINED_REJECTIONS:
                await drain(request_iterator, self._coordinator.max_update_bytes + self._chunk_bytes)
            await _abort(context, REJECTION_CODES[err.reason], f"update rejected ({refusal}): {err.message}", refusal)
        self._observe("UploadUpdate", started)
        return pb.UploadResponse(
            result=pb.UploadResponse.ACCEPTED if result.outcome == Outcome.COMPLETED else pb.UploadResponse.LATE,
            round=result.round,
            next_round=result.next_round,
        )

    async def ReportEvaluation(self, request: pb.EvaluationReport, context: Any) -> pb.ReportEvaluationResponse:
        device_id = await self._device(context)
        try:
            accepted = self._coordinator.report_evaluation(device_id, request)
        except BadReport as err:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err), Refusal.BAD_REPORT)
        return pb.ReportEvaluationResponse(accepted=accepted, next_round=self._coordinator.next_round)

    # ---- secure aggregation: each call waits until its stage closes -------------------------------------

    async def AdvertiseKeys(self, request: pb.AdvertiseKeysRequest, context: Any) -> pb.KeyBroadcast:
        return await self._secure(context, request.round, lambda secure, device: secure.advertise_keys(device, request))

    async def ShareKeys(self, request: pb.ShareKeysRequest, context: Any) -> pb.ShareBundle:
        return await self._secure(context, request.round, lambda secure, device: secure.share_keys(device, request))

    async def UploadMaskedInput(
        self, request_iterator: AsyncIterator[pb.MaskedInputChunk], context: Any
    ) -> pb.UnmaskRequest:
        started = time.perf_counter()
        done = self._coordinator.secure_input_done
        reply = await self._secure(
            context,
            self._coordinator.next_round,  # the header names the round; the open one is checked against it
            lambda secure, device: secure.masked_input(device, request_iterator, on_received=done),
        )
        self._observe("UploadMaskedInput", started)
        return reply

    async def Unmask(self, request: pb.UnmaskResponse, context: Any) -> pb.UnmaskAck:
        await self._secure(context, request.round, lambda secure, device: secure.unmask(device, request))
        return pb.UnmaskAck(next_round=self._coordinator.next_round)

    async def _secure(self, context: Any, round_number: int, call: Callable[[SecureRound, str], Awaitable[R]]) -> R:
        """Authenticate, find the open secure round and make one stage call; refusals become status codes."""
        device_id = await self._device(context)
        try:
            return await call(self._coordinator.secure_round(round_number), device_id)
        except SecureRoundRefused as err:
            await _refuse(context, err)


async def _refuse(context: Any, err: SecureRoundRefused) -> NoReturn:
    refusal = err.reason
    await _abort(context, SECURE_CODES.get(refusal, grpc.StatusCode.FAILED_PRECONDITION), err.message, refusal)

"""The device's fleet link over gRPC (fedfleet.v1.Fleet): TLS, a bearer token, a deadline on every call.

    async with GrpcFleetLink("gateway:443", token=token, root_certificates=ca_pem) as link:
        await ModelUpdater(link, ...).run()

Every unary call and every download has a deadline; the assignment stream has none of its own (it lives as
long as the device is connected) but must bring an event or a keepalive within the time the gateway's last
keepalive promised, or the link calls it dead. Failures become `LinkError`s that say whether to retry
(connection lost, deadline passed, nothing published yet), stop for good (token refused) or drop the call; the
updater backs off, reconnects and resumes a download at the offset it holds. The link checks what it receives
too: a chunk at an offset other than the next one, or a stream whose total size changes, is a broken download.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from fedfleet.proto import refusals
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as pb_grpc

from .client import channel_options
from .fleet_refusals import refusal_error
from .model_updates import (
    LOAD_ERROR,
    CheckInAnswer,
    HealthReport,
    LinkError,
    ModelOffer,
    release_from_parts,
)

#: Status codes of a call that may well work when tried again.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,  # the server went away mid-call
        grpc.StatusCode.INTERNAL,  # a reset stream
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
#: Status codes that mean the credentials are refused, when the gateway gave no reason.
FATAL_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
#: Slack on the gateway's keepalive promise before a silent stream is declared dead (network and scheduling).
KEEPALIVE_SLACK = 1.5
KEEPALIVE_MARGIN_SECONDS = 5.0
#: Bounds on the keepalive interval a gateway may announce: a hostile one cannot make a device wait forever.
MIN_KEEPALIVE_SECONDS = 1.0
MAX_KEEPALIVE_SECONDS = 600.0
#: The largest data chunk accepted (the gateway sends at most 256 KiB).
MAX_DOWNLOAD_MESSAGE_BYTES = 4 << 20

_FAILURE_CODES: dict[str, int] = {
    name.lower(): int(value) for name, value in pb.ModelHealthReport.ActivationFailure.items() if name != "NONE"
}
_ROLES: dict[int, str] = {int(v): name.lower() for name, v in pb.ModelAssignment.Role.items()}


def failure_code(reason: str) -> int:
    """The wire enum of an activation failure reason (a RejectionReason value or LOAD_ERROR)."""
    return _FAILURE_CODES.get(reason, _FAILURE_CODES[LOAD_ERROR])


class GrpcFleetLink:
    def __init__(
        self,
        target: str,
        *,
        token: str,
        root_certificates: bytes,
        app_version: str = "",
        call_seconds: float = 10.0,
        download_seconds: float = 120.0,
        stream_margin_seconds: float = KEEPALIVE_MARGIN_SECONDS,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        checked = (
            ("call_seconds", call_seconds),
            ("download_seconds", download_seconds),
            ("stream_margin_seconds", stream_margin_seconds),
        )
        for name, value in checked:
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.app_version = app_version
        self.call_seconds = call_seconds
        self.download_seconds = download_seconds
        self.stream_margin_seconds = stream_margin_seconds  # beyond the gateway's keepalive promise (network)
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        extra = (("grpc.max_receive_message_length", MAX_DOWNLOAD_MESSAGE_BYTES), *options)
        self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options(extra))
        self._stub = pb_grpc.FleetStub(self._channel)

    async def __aenter__(self) -> GrpcFleetLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def check_in(self, attributes: Mapping[str, str], running: str | None) -> CheckInAnswer:
        request = pb.FleetCheckInRequest(
            attributes=dict(attributes), current_version=running or "", app_version=self.app_version
        )
        try:
            response: pb.FleetCheckInResponse = await self._stub.CheckIn(
                request, metadata=self._metadata, timeout=self.call_seconds, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as err:
            raise link_error(err) from None
        return CheckInAnswer(offer_of(response.assignment), response.check_in_interval_seconds)

    async def watch(self, attributes: Mapping[str, str]) -> AsyncIterator[ModelOffer | None]:
        call = self._stub.WatchAssignment(
            pb.WatchAssignmentRequest(attributes=dict(attributes)), metadata=self._metadata, wait_for_ready=True
        )
        # Until the first event the call's own connect time counts: the per-call deadline.
        within = self.call_seconds
        try:
            while True:
                try:
                    event = await asyncio.wait_for(call.read(), within)
                except TimeoutError:
                    raise LinkError(
                        f"the assignment stream brought nothing for {within:.0f}s: taken as dead", transient=True
                    ) from None
                except grpc.aio.AioRpcError as err:
                    raise link_error(err) from None
                if event is grpc.aio.EOF:
                    return
                if event.WhichOneof("event") == "keepalive":
                    promised = event.keepalive.next_within_seconds
                    bounded = promised if math.isfinite(promised) else MAX_KEEPALIVE_SECONDS
                    bounded = min(MAX_KEEPALIVE_SECONDS, max(MIN_KEEPALIVE_SECONDS, bounded))
                    within = bounded * KEEPALIVE_SLACK + self.stream_margin_seconds
                    continue
                yield offer_of(event.assignment)
        finally:
            call.cancel()

    async def download(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        call = self._stub.DownloadArtifact(
            pb.DownloadArtifactRequest(digest=digest, offset=offset),
            metadata=self._metadata,
            timeout=self.download_seconds,
            wait_for_ready=True,
        )
        expected, total = offset, None
        try:
            while True:
                try:
                    chunk = await call.read()
                except grpc.aio.AioRpcError as err:
                    raise link_error(err) from None
                if chunk is grpc.aio.EOF:
                    return
                if chunk.offset != expected or (total is not None and chunk.total_size != total):
                    raise LinkError(
                        f"download of {digest}: a chunk at offset {chunk.offset} of {chunk.total_size} bytes, "
                        f"expected offset {expected}" + (f" of {total}" if total is not None else ""),
                        transient=True,
                    )
                total = chunk.total_size
                expected += len(chunk.data)
                yield chunk.data
        finally:
            call.cancel()

    async def report_health(self, report: HealthReport, attributes: Mapping[str, str]) -> None:
        message = pb.ModelHealthReport(version=report.version, attributes=dict(attributes))
        if report.measurement is not None:
            m = report.measurement
            message.accuracy = m.accuracy
            message.loss = m.loss
            message.inference_latency_ms = m.latency_seconds * 1000.0
            message.examples = m.examples
        elif report.failure is not None:
            message.activation_failure = failure_code(report.failure.reason)  # type: ignore[assignment]
        try:
            await self._stub.ReportModelHealth(
                message, metadata=self._metadata, timeout=self.call_seconds, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as err:
            raise link_error(err) from None


def offer_of(assignment: pb.ModelAssignment) -> ModelOffer | None:
    """The device's offer from the wire; None when there is no version for it."""
    if not assignment.version:
        return None
    release = None
    if assignment.HasField("release"):
        r = assignment.release
        release = release_from_parts(r.record, r.signature, r.key_id)
    return ModelOffer(
        version=assignment.version,
        role=_ROLES.get(int(assignment.role), "stable"),
        rollout=assignment.rollout,
        revision=int(assignment.revision),
        release=release,
        generation=int(assignment.generation),
    )


def link_error(err: grpc.aio.AioRpcError) -> LinkError:
    reason = None
    for key, value in err.trailing_metadata() or ():
        if key == refusals.ERROR_KEY and isinstance(value, str):
            reason = refusals.parse(value)
    code = err.code()
    message = f"{code.name}: {err.details() or ''}"
    if reason is None and code in FATAL_CODES:
        return LinkError(message, transient=False, fatal=True)
    return refusal_error(reason, message, transient_by_status=code in TRANSIENT_CODES)

"""The gRPC servicers of fedfleet.v1.Fleet (devices) and fedfleet.v1.FleetAdmin (the operator, aggregators):
authentication, then one call into the Gateway core.

Thin on purpose: domain refusals (GatewayError) become status codes here and nowhere else. Every refusal
carries a one-line message and, in the trailing metadata `fedfleet-error`, the protocol's reason
(fedfleet.proto.refusals), and is counted in `fedfleet_gateway_refusals_total{method,reason}` — the core counts
its own, this layer the ones it finds (credentials).

Device tokens are the job tokens of security/tokens.py with a fleet as the audience; one key serves every
fleet of the gateway, and a token for a fleet this gateway does not serve (or a job's) is PERMISSION_DENIED.
An expired token is UNAUTHENTICATED: a fresh token fixes it.

FleetAdmin has two bearer secrets, both compared in constant time: the admin secret may make every call, the
publish secret (optional) only PublishModel — it is what aggregators hold, next to users' training pods, so a
leaked one can add an artifact to the store but never change which model a fleet runs. The publish secret on
another call is PERMISSION_DENIED (publish_token_only): the caller is known, the call is not its to make.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from fedfleet.proto.guard import Malformed, MessageLimits
from fedfleet.proto.refusals import ERROR_KEY, Refusal
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.security.tokens import TokenError, TokenProblem, TokenVerifier, fleet_of

from .assignment_messages import AssignmentMessages
from .core import Gateway
from .errors import GatewayError
from .health_stats import VersionHealth
from .inputs import HealthReport
from .releases import SignedParts
from .watchers import WatchClosed

REFUSAL_CODES: dict[Refusal, grpc.StatusCode] = {
    Refusal.TOKEN_MISSING: grpc.StatusCode.UNAUTHENTICATED,
    Refusal.TOKEN_MALFORMED: grpc.StatusCode.UNAUTHENTICATED,
    Refusal.TOKEN_BAD_SIGNATURE: grpc.StatusCode.UNAUTHENTICATED,
    Refusal.TOKEN_EXPIRED: grpc.StatusCode.UNAUTHENTICATED,
    Refusal.ADMIN_TOKEN_INVALID: grpc.StatusCode.UNAUTHENTICATED,
    Refusal.PUBLISH_TOKEN_ONLY: grpc.StatusCode.PERMISSION_DENIED,
    Refusal.TOKEN_WRONG_FLEET: grpc.StatusCode.PERMISSION_DENIED,
    Refusal.MALFORMED_MESSAGE: grpc.StatusCode.INVALID_ARGUMENT,
    Refusal.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Refusal.BAD_ATTRIBUTES: grpc.StatusCode.INVALID_ARGUMENT,
    Refusal.NO_FLEET_VIEW: grpc.StatusCode.UNAVAILABLE,
    Refusal.NOT_ASSIGNED: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.BAD_HEALTH_REPORT: grpc.StatusCode.INVALID_ARGUMENT,
    Refusal.REPORT_TOO_FREQUENT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Refusal.UNKNOWN_ARTIFACT: grpc.StatusCode.NOT_FOUND,
    Refusal.OFFSET_OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    Refusal.TOO_MANY_WATCHES: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Refusal.UNKNOWN_FLEET: grpc.StatusCode.NOT_FOUND,
    Refusal.BAD_FLEET_VIEW: grpc.StatusCode.INVALID_ARGUMENT,
    Refusal.STALE_FLEET_VIEW: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.ARTIFACT_MISSING: grpc.StatusCode.FAILED_PRECONDITION,
    Refusal.PUBLISH_REJECTED: grpc.StatusCode.INVALID_ARGUMENT,
}

TOKEN_REFUSALS: dict[TokenProblem, Refusal] = {
    TokenProblem.MISSING: Refusal.TOKEN_MISSING,
    TokenProblem.MALFORMED: Refusal.TOKEN_MALFORMED,
    TokenProblem.BAD_SIGNATURE: Refusal.TOKEN_BAD_SIGNATURE,
    TokenProblem.WRONG_JOB: Refusal.TOKEN_WRONG_FLEET,
    TokenProblem.EXPIRED: Refusal.TOKEN_EXPIRED,
}

#: The FleetAdmin calls the publish secret may make.
PUBLISH_METHODS = frozenset({"PublishModel"})

#: Bytes of one data message of PublishModel (devices get at most 256 KiB per DownloadArtifact message).
MAX_PUBLISH_CHUNK_BYTES = 1 << 20
#: The largest request of any other method: device attributes dominate.
SMALL_HEADROOM_BYTES = 4096


def message_limits(gateway: Gateway) -> MessageLimits:
    """Bytes each method's messages may have on the wire, from the gateway's limits."""
    s = gateway.settings
    attributes = s.attributes.max_attributes * (s.attributes.max_key_chars + s.attributes.max_value_chars + 16)
    small = attributes + SMALL_HEADROOM_BYTES
    release = 8192 + 512 + 128 + 256  # record, signature, key id, the map entry's digest and framing
    return MessageLimits(
        default=small,
        per_method={
            "PublishModel": MAX_PUBLISH_CHUNK_BYTES + SMALL_HEADROOM_BYTES,
            "PutFleetView": s.max_view_bytes + s.max_releases * release + SMALL_HEADROOM_BYTES,
        },
        headers={"PublishModel": 1024},
    )


def max_message_bytes(limits: MessageLimits) -> int:
    return max([limits.default, *limits.per_method.values()])


def malformed_in_stream(index: int, malformed: Malformed) -> Exception:
    # Counted where it was found (the guard's counter); the publish refuses it as a bad request.
    return GatewayError(
        Refusal.MALFORMED_MESSAGE, f"message {index} of the stream: {malformed.describe()}", counted=True
    )


async def _abort(context: Any, reason: Refusal, message: str) -> NoReturn:
    await context.abort(REFUSAL_CODES[reason], message, trailing_metadata=((ERROR_KEY, reason.value),))
    raise AssertionError("context.abort returned")  # it always raises


def bearer(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, rest = value.partition(" ")
            return rest.strip() if scheme.lower() == "bearer" else None
    return None


def role_value(role: str) -> int:
    return int(pb.ModelAssignment.Role.Value(role.upper())) if role.upper() in _ROLES else 0


_ROLES = frozenset(pb.ModelAssignment.Role.keys())


class FleetService:
    """Implements fedfleet.v1.Fleet."""

    def __init__(self, gateway: Gateway, verifier: TokenVerifier) -> None:
        self._gateway = gateway
        self._verifier = verifier
        self._messages = AssignmentMessages(gateway.settings.check_in_interval_seconds)

    async def _device(self, context: Any, method: str) -> tuple[str, str]:
        """(fleet, device id) of the caller's token."""
        try:
            claims = self._verifier.verify(bearer(context))
        except TokenError as err:
            await self._refuse(context, method, TOKEN_REFUSALS[err.problem], err.message)
        fleet = fleet_of(claims.job)
        if fleet is None or fleet not in self._gateway.states.fleets:
            await self._refuse(context, method, Refusal.TOKEN_WRONG_FLEET, "the token is not for a fleet served here")
        return fleet, claims.device_id

    async def _refuse(self, context: Any, method: str, reason: Refusal, message: str) -> NoReturn:
        self._gateway.metrics.refused(method, reason)
        await _abort(context, reason, message)

    async def CheckIn(self, request: pb.FleetCheckInRequest, context: Any) -> pb.FleetCheckInResponse:
        fleet, device = await self._device(context, "CheckIn")
        try:
            answer = self._gateway.check_in(
                fleet, device, request.attributes, request.current_version, request.app_version
            )
        except GatewayError as err:
            await _abort(context, err.reason, err.message)
        return self._messages.check_in(answer)

    async def GetAssignment(self, request: pb.GetAssignmentRequest, context: Any) -> pb.ModelAssignment:
        fleet, device = await self._device(context, "GetAssignment")
        try:
            return self._messages.assignment(self._gateway.assignment_for(fleet, device, request.attributes))
        except GatewayError as err:
            await _abort(context, err.reason, err.message)

    async def WatchAssignment(
        self, request: pb.WatchAssignmentRequest, context: Any
    ) -> AsyncIterator[pb.AssignmentEvent]:
        fleet, device = await self._device(context, "WatchAssignment")
        try:
            watch = self._gateway.open_watch(fleet, device, request.attributes)
        except GatewayError as err:
            await _abort(context, err.reason, err.message)
        keepalive_seconds = self._gateway.settings.keepalive_seconds
        keepalive = pb.AssignmentEvent(keepalive=pb.WatchKeepalive(next_within_seconds=keepalive_seconds))
        try:
            while True:
                answer = await watch.next(keepalive_seconds)
                if answer is None:
                    yield keepalive
                else:
                    yield self._messages.event(answer)
        except WatchClosed:
            return
        finally:
            self._gateway.close_watch(watch)

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Any
    ) -> AsyncIterator[pb.ArtifactChunk]:
        fleet, _ = await self._device(context, "DownloadArtifact")
        try:
            size, chunks = self._gateway.download(fleet, request.digest, request.offset)
        except GatewayError as err:
            await _abort(context, err.reason, err.message)
        try:
            for offset, data in chunks:
                yield pb.ArtifactChunk(offset=offset, data=data, total_size=size)
        except GatewayError as err:  # the artifact left the volume during the download
            await _abort(context, err.reason, err.message)

    async def ReportModelHealth(self, request: pb.ModelHealthReport, context: Any) -> pb.ModelHealthAck:
        fleet, device = await self._device(context, "ReportModelHealth")
        enum = pb.ModelHealthReport.ActivationFailure
        known = request.activation_failure in enum.values()
        report = HealthReport(
            version=request.version,
            accuracy=request.accuracy,
            loss=request.loss,
            inference_latency_ms=request.inference_latency_ms,
            examples=request.examples,
            # An enum number this server does not know is passed on as such, for the core to refuse and count.
            activation_failure=enum.Name(request.activation_failure).lower()
            if known
            else f"#{request.activation_failure}",
        )
        try:
            self._gateway.report_health(fleet, device, request.attributes, report)
        except GatewayError as err:
            await _abort(context, err.reason, err.message)
        return pb.ModelHealthAck(accepted=True)


class FleetAdminService:
    """Implements fedfleet.v1.FleetAdmin: every call with the admin secret, PublishModel also with the publish
    secret when there is one."""

    def __init__(self, gateway: Gateway, admin_secret: str, publish_secret: str | None = None) -> None:
        self._gateway = gateway
        self._secret = admin_secret.encode("ascii")
        self._publish_secret = None if publish_secret is None else publish_secret.encode("ascii")
        if self._publish_secret is not None and hmac.compare_digest(self._publish_secret, self._secret):
            raise ValueError("publish secret: must differ from the admin secret, or it could make every call")

    async def _authorize(self, context: Any, method: str) -> None:
        """Return when the caller may make `method`; refuse (and count) the call otherwise."""
        token = bearer(context)
        if not token:
            await self._refuse(
                context, method, Refusal.TOKEN_MISSING, "no admin or publish token: send 'authorization: Bearer'"
            )
        presented = token.encode("utf-8", "replace")
        # Constant time in each secret, and both always compared: neither a wrong guess nor the time taken
        # says how much of a secret was right, or which one was nearly matched.
        is_admin = hmac.compare_digest(presented, self._secret)
        is_publisher = self._publish_secret is not None and hmac.compare_digest(presented, self._publish_secret)
        if is_admin:
            return
        if not is_publisher:
            await self._refuse(context, method, Refusal.ADMIN_TOKEN_INVALID, "not a valid admin or publish token")
        if method not in PUBLISH_METHODS:
            await self._refuse(
                context,
                method,
                Refusal.PUBLISH_TOKEN_ONLY,
                f"{method}: the publish token may only publish models (PublishModel); {method} needs the admin token",
            )

    async def _refuse(self, context: Any, method: str, reason: Refusal, message: str) -> NoReturn:
        self._gateway.metrics.refused(method, reason)
        await _abort(context, reason, message)

    async def PublishModel(
        self, request_iterator: AsyncIterator[pb.PublishModelChunk], context: Any
    ) -> pb.PublishModelResponse:
        await self._authorize(context, "PublishModel")
        try:
            first = await anext(aiter(request_iterator), None)
        except GatewayError as err:  # the first message did not parse
            await _abort(context, err.reason, err.message)
        if first is None or first.WhichOneof("part") != "header":
            await self._refuse(
                context, "PublishModel", Refusal.BAD_REQUEST, "the first message of the stream must be the header"
            )
        try:
            digest = await self._gateway.publish(_data(request_iterator), first.header.digest, first.header.size)
        except GatewayError as err:
            await _abort(context, err.reason, err.message)
        return pb.PublishModelResponse(digest=digest, size=first.header.size)

    async def PutFleetView(self, request: pb.PutFleetViewRequest, context: Any) -> pb.PutFleetViewResponse:
        await self._authorize(context, "PutFleetView")
        releases = {
            digest: SignedParts(record=r.record, signature=r.signature, key_id=r.key_id)
            for digest, r in request.releases.items()
        }
        try:
            generation, changed = self._gateway.put_fleet_view(request.fleet, request.view, releases)
        except GatewayError as err:
            await _abort(context, err.reason, err.message)
        return pb.PutFleetViewResponse(generation=generation, changed=changed)

    async def GetFleetSummary(self, request: pb.GetFleetSummaryRequest, context: Any) -> pb.FleetSummary:
        await self._authorize(context, "GetFleetSummary")
        try:
            summary = self._gateway.summary(request.fleet)
        except GatewayError as err:
            await _abort(context, err.reason, err.message)
        return pb.FleetSummary(
            fleet=summary.fleet,
            generation=summary.generation,
            devices=[
                pb.DeviceCount(version=version, role=role_value(role), devices=n)  # type: ignore[arg-type]
                for (version, role), n in summary.devices.items()
            ],
            health=[_health_message(h) for h in summary.health],
            check_in_interval_seconds=summary.check_in_interval_seconds,
        )


def _health_message(h: VersionHealth) -> pb.VersionHealth:
    return pb.VersionHealth(
        version=h.version,
        role=role_value(h.role),  # type: ignore[arg-type]
        reports=h.reports,
        reporting_devices=h.reporting_devices,
        activation_failures=h.activation_failures,
        mean_accuracy=h.mean_accuracy,
        mean_loss=h.mean_loss,
        latency_p50_seconds=h.latency_p50_seconds,
        latency_p99_seconds=h.latency_p99_seconds,
        failures_by_reason=h.failures_by_reason,
    )


async def _data(requests: AsyncIterator[pb.PublishModelChunk]) -> AsyncIterator[bytes]:
    index = 1
    async for message in requests:
        if message.WhichOneof("part") != "data":
            raise GatewayError(Refusal.BAD_REQUEST, f"message {index} of the stream: only data may follow the header")
        yield message.data
        index += 1

"""Registering the Aggregator servicer so that bytes which do not parse as the method's message are a
refusal — INVALID_ARGUMENT for a request, DATA_LOSS inside an upload stream — counted by method, logged at
most once per interval, and never a traceback.

grpcio's generated `add_AggregatorServicer_to_server` deserializes with `Message.FromString`; when that
raises, grpc logs a full ERROR traceback and answers UNKNOWN, for every such request, so a hostile client
can flood the log. Here the deserializer returns a `Malformed` marker instead, and a thin wrapper per method
turns it into a precise status before the servicer sees anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fedfleet.engine.round import UpdateRejected
from fedfleet.engine.types import RejectReason
from fedfleet.proto.refusals import ERROR_KEY, Refusal
from fedfleet.proto.v1 import aggregator_pb2 as pb

log = logging.getLogger("fedfleet.aggregator")

SERVICE = pb.DESCRIPTOR.services_by_name["Aggregator"]
#: At most one log line about malformed messages per this many seconds.
LOG_INTERVAL_SECONDS = 10.0


class Malformed:
    """What a request that failed to parse becomes: the reason, for the refusal's message."""

    def __init__(self, type_name: str, detail: str) -> None:
        self.type_name = type_name
        self.detail = detail

    def describe(self) -> str:
        return f"the message is not a valid {self.type_name}: {self.detail or 'it does not parse'}"


class MalformedCounter:
    """Counts malformed messages by method and logs one line per interval, whatever their rate."""

    def __init__(self, count: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._count = count
        self._clock = clock
        self._logged_at = float("-inf")
        self._unlogged = 0

    def __call__(self, method: str, malformed: Malformed) -> None:
        self._count(method)
        self._unlogged += 1
        now = self._clock()
        if now - self._logged_at >= LOG_INTERVAL_SECONDS:
            log.warning("%d malformed message(s) refused; latest: %s: %s", self._unlogged, method, malformed.describe())
            self._logged_at, self._unlogged = now, 0


def add_guarded_servicer(servicer: Any, server: grpc.aio.Server, on_malformed: MalformedCounter) -> None:
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        request_type, response_type = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        deserialize = _guarded(request_type)
        serialize = response_type.SerializeToString
        if not method.client_streaming and not method.server_streaming:
            handler = grpc.unary_unary_rpc_method_handler(
                _unary(method.name, behaviour, on_malformed), deserialize, serialize
            )
        elif not method.client_streaming:
            handler = grpc.unary_stream_rpc_method_handler(
                _unary_stream(method.name, behaviour, on_malformed), deserialize, serialize
            )
        elif not method.server_streaming:
            handler = grpc.stream_unary_rpc_method_handler(
                _stream_unary(method.name, behaviour, on_malformed), deserialize, serialize
            )
        else:
            raise TypeError(f"{method.name}: bidirectional streams are not part of fedfleet.v1")
        handlers[method.name] = handler
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))


def _guarded(message_type: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Malformed(message_type.DESCRIPTOR.name, str(exc))

    return deserialize


async def _refuse(context: Any, method: str, malformed: Malformed, on_malformed: MalformedCounter) -> None:
    on_malformed(method, malformed)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{method}: {malformed.describe()}",
        trailing_metadata=((ERROR_KEY, Refusal.MALFORMED_MESSAGE.value),),
    )


def _unary(method: str, behaviour: Any, on_malformed: MalformedCounter) -> Callable[..., Any]:
    async def handle(request: Any, context: Any) -> Any:
        if isinstance(request, Malformed):
            await _refuse(context, method, request, on_malformed)
        return await behaviour(request, context)

    return handle


def _unary_stream(method: str, behaviour: Any, on_malformed: MalformedCounter) -> Callable[..., Any]:
    async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, Malformed):
            await _refuse(context, method, request, on_malformed)
        async for response in behaviour(request, context):
            yield response

    return handle


def _stream_unary(method: str, behaviour: Any, on_malformed: MalformedCounter) -> Callable[..., Any]:
    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for index, request in _numbered(requests):
            if isinstance(request, Malformed):
                on_malformed(method, request)
                # Inside a stream a bad message is a corrupt upload: refused and counted like one, DATA_LOSS.
                raise UpdateRejected(RejectReason.CORRUPT, f"message {index} of the stream: {request.describe()}")
            yield request

    async def handle(requests: AsyncIterator[Any], context: Any) -> Any:
        return await behaviour(checked(requests), context)

    return handle


async def _numbered(requests: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    index = 0
    async for request in requests:
        yield index, request
        index += 1

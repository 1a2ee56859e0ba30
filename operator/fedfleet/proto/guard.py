"""Registering a gRPC servicer so that bytes which do not parse as the method's message, or are larger than
the method needs, are a refusal — INVALID_ARGUMENT for a request, the caller's choice of error inside a
client stream — counted by method, logged at most once per interval, and never a traceback.

Sizes are checked on the wire bytes before protobuf builds any object: a request is at most what its method
needs (`MessageLimits`), and the header of a client stream at most what the method's header needs, so a
header padded with a million empty repeated fields is refused unparsed instead of costing 100 MB of objects.

grpcio's generated `add_*Servicer_to_server` deserializes with `Message.FromString`; when that raises, grpc
logs a full ERROR traceback and answers UNKNOWN, for every such request, so a hostile client can flood the
log. Here the deserializer returns a `Malformed` marker instead, and a thin wrapper per method turns it into
a precise status before the servicer sees anything.

Every fedfleet server (the aggregator, the fleet gateway) registers its services through here, so the rule
is written once; it sits on the proto floor because both servers are on the floor above and may not import
each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fedfleet.proto.refusals import ERROR_KEY, Refusal

#: At most one log line about malformed messages per this many seconds.
LOG_INTERVAL_SECONDS = 10.0
#: Top-level fields a stream's chunk may carry (each has a handful, one set); protobuf would merge any number
#: of repeats, each costing a parse.
MAX_TOP_LEVEL_FIELDS = 16
#: The `header` field of every client-streaming chunk message in fedfleet.v1 (a oneof of header, data, ...).
HEADER_FIELD = 1


@dataclass(frozen=True)
class MessageLimits:
    """Bytes a message of each method may have on the wire, and a client stream's header."""

    default: int  # methods not named in per_method
    per_method: dict[str, int] = field(default_factory=dict)
    headers: dict[str, int] = field(default_factory=dict)  # the header field of each client-streaming method
    header_rule: str = "this method takes"  # completes "a header of N bytes; <rule> at most M" in refusals

    def for_method(self, method: str) -> int:
        return self.per_method.get(method, self.default)


class Malformed:
    """What a request that failed to parse becomes: the reason, for the refusal's message."""

    def __init__(self, type_name: str, detail: str) -> None:
        self.type_name = type_name
        self.detail = detail

    def describe(self) -> str:
        return f"the message is not a valid {self.type_name}: {self.detail or 'it does not parse'}"


class MalformedCounter:
    """Counts malformed messages by method and logs one line per interval, whatever their rate."""

    def __init__(
        self,
        count: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self._count = count
        self._clock = clock
        self._log = logger or logging.getLogger("fedfleet.proto.guard")
        self._logged_at = float("-inf")
        self._unlogged = 0

    def __call__(self, method: str, malformed: Malformed) -> None:
        self._count(method)
        self._unlogged += 1
        now = self._clock()
        if now - self._logged_at >= LOG_INTERVAL_SECONDS:
            self._log.warning(
                "%d malformed message(s) refused; latest: %s: %s", self._unlogged, method, malformed.describe()
            )
            self._logged_at, self._unlogged = now, 0


#: What a malformed message inside a client stream becomes: an exception the servicer already turns into a
#: refusal (message index in the stream, what was wrong).
StreamError = Callable[[int, Malformed], Exception]


def add_guarded_servicer(
    servicer: Any,
    server: grpc.aio.Server,
    service_name: str,
    messages: ModuleType,
    on_malformed: MalformedCounter,
    limits: MessageLimits,
    stream_error: StreamError,
) -> None:
    """Register `servicer` for the service `service_name` of the generated module `messages`."""
    service = messages.DESCRIPTOR.services_by_name[service_name]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_type = getattr(messages, method.input_type.name)
        response_type = getattr(messages, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        header_limit = limits.headers.get(method.name)
        deserialize = guarded_deserializer(
            request_type, limits.for_method(method.name), header_limit, limits.header_rule
        )
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
                _stream_unary(method.name, behaviour, on_malformed, stream_error), deserialize, serialize
            )
        else:
            raise TypeError(f"{method.name}: bidirectional streams are not part of fedfleet.v1")
        handlers[method.name] = handler
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def guarded_deserializer(
    message_type: Any, max_bytes: int, header_limit: int | None, header_rule: str = "this method takes"
) -> Callable[[bytes], Any]:
    name = message_type.DESCRIPTOR.name

    def deserialize(data: bytes) -> Any:
        if len(data) > max_bytes:
            return Malformed(name, f"{len(data)} bytes, more than the {max_bytes} this method takes")
        if header_limit is not None:
            # A stream's chunk is one of header, data or trailer: read its fields' sizes before parsing any.
            try:
                fields = top_level_fields(data)
            except ValueError as exc:
                return Malformed(name, str(exc))
            for number, length in fields:
                if number == HEADER_FIELD and length > header_limit:
                    return Malformed(name, f"a header of {length} bytes; {header_rule} at most {header_limit}")
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Malformed(name, str(exc))

    return deserialize


def top_level_fields(data: bytes) -> list[tuple[int, int]]:
    """(field number, bytes) of each top-level field, read from the wire format without parsing values.
    Raises ValueError for bytes that are not a protobuf message or carry too many fields."""
    fields: list[tuple[int, int]] = []
    at, end = 0, len(data)
    while at < end:
        if len(fields) >= MAX_TOP_LEVEL_FIELDS:
            raise ValueError(f"more than {MAX_TOP_LEVEL_FIELDS} top-level fields")
        tag, at = _varint(data, at)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            _, at = _varint(data, at)
            length = 0
        elif wire_type == 1:
            length, at = 8, at + 8
        elif wire_type == 2:
            length, at = _varint(data, at)
            at += length
        elif wire_type == 5:
            length, at = 4, at + 4
        else:
            raise ValueError(f"wire type {wire_type} is not used by fedfleet.v1")
        if at > end:
            raise ValueError("truncated field")
        fields.append((number, length))
    return fields


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


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


def _stream_unary(
    method: str, behaviour: Any, on_malformed: MalformedCounter, stream_error: StreamError
) -> Callable[..., Any]:
    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for index, request in _numbered(requests):
            if isinstance(request, Malformed):
                on_malformed(method, request)
                raise stream_error(index, request)
            yield request

    async def handle(requests: AsyncIterator[Any], context: Any) -> Any:
        return await behaviour(checked(requests), context)

    return handle


async def _numbered(requests: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    index = 0
    async for request in requests:
        yield index, request
        index += 1

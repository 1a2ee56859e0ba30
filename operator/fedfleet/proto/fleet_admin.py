"""Publishing a model artifact to the fleet gateway (fedfleet.v1.FleetAdmin/PublishModel), for the two
publishers: an aggregator whose job completed (with the gateway's publish token, which may make no other
call), and `fedfleet publish` run by hand (with the admin token, or the publish token).

On the proto floor because the aggregator may not import fedfleet.gateway and both publishers need the same
client. Synchronous on purpose: a publish is one call at the end of a job, run on a worker thread by the
aggregator and directly by the CLI.

The artifact travels as a header (its digest and size) followed by data chunks well under the gateway's
per-message bound. Each attempt has its own deadline; UNAVAILABLE (the gateway restarting, a Service with no
ready endpoint yet, a connection refused) is retried with exponential backoff on a fresh channel, because
publishing is idempotent: the store is content-addressed, so a retry after a lost answer stores nothing twice.
Every other status is final. Errors are one line naming the gateway, the status and, when the gateway sent
one, its refusal reason (fedfleet.proto.refusals).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from fedfleet.models.artifact import digest_of
from fedfleet.proto.refusals import ERROR_KEY
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc

#: Data bytes per stream message: half the gateway's bound per PublishModel message (1 MiB).
CHUNK_BYTES = 512 << 10
#: Statuses worth another attempt: the gateway could not be reached, or went away mid-stream.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
#: Longest target accepted ("host:port"): a DNS name is at most 253 characters.
MAX_TARGET_CHARS = 300
#: What the gateway's secrets are (hex of 32 bytes); a longer value cannot be one.
MAX_TOKEN_CHARS = 1024


class PublishError(Exception):
    """The artifact was not published. `code` is the last gRPC status (None for bad input), `reason` the
    gateway's refusal reason when it gave one, `attempts` how many calls were made."""

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, reason: str | None = None, attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `attempts` calls at most, each with `attempt_seconds` to finish, waiting
    `initial_backoff` · 2^k seconds (at most `max_backoff`) before the k-th retry."""

    attempts: int = 6
    attempt_seconds: float = 120.0
    initial_backoff: float = 1.0
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts: must be at least 1, got {self.attempts}")
        if not self.attempt_seconds > 0:
            raise ValueError(f"attempt_seconds: must be greater than 0, got {self.attempt_seconds}")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError("backoff: need 0 <= initial_backoff <= max_backoff")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        return float(min(self.max_backoff, self.initial_backoff * 2 ** (retry - 1)))


#: Told about each failed attempt that will be retried: (attempt number, the error, seconds until the next).
RetryListener = Callable[[int, PublishError, float], None]


def publish_model(
    target: str,
    ca_pem: bytes,
    token: str,
    data: bytes,
    *,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: RetryListener | None = None,
) -> str:
    """Publish the artifact `data` to the gateway at `target` ("host:port"), over TLS trusting `ca_pem`, as
    the FleetAdmin caller holding `token` (the gateway's admin or publish secret, hex); returns its digest
    ("sha256:<hex>"). Raises PublishError."""
    policy = policy or RetryPolicy()
    _check_inputs(target, ca_pem, token, data)
    digest = digest_of(data)
    attempt = 0
    while True:
        attempt += 1
        try:
            answer = _publish_once(target, ca_pem, token, data, digest, policy.attempt_seconds)
        except grpc.RpcError as err:
            retryable = hasattr(err, "code") and err.code() in RETRYABLE
            if not retryable:
                raise _describe(err, target, attempt) from None
            if attempt >= policy.attempts:
                raise _describe(err, target, attempt, f"gave up after {attempt} attempts") from None
            error = _describe(err, target, attempt)
            delay = policy.delay(attempt)
            if on_retry is not None:
                on_retry(attempt, error, delay)
            sleep(delay)
            continue
        if answer.digest != digest or answer.size != len(data):
            raise PublishError(
                f"the gateway at {target} answered digest {answer.digest[:80]!r} and size {answer.size} for an "
                f"artifact of digest {digest} and size {len(data)}",
                attempts=attempt,
            )
        return digest


def chunks(data: bytes, digest: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.PublishModelChunk]:
    """The request stream: the header, then the bytes in order."""
    yield pb.PublishModelChunk(header=pb.PublishModelHeader(digest=digest, size=len(data)))
    view = memoryview(data)
    for start in range(0, len(data), chunk_bytes):
        yield pb.PublishModelChunk(data=bytes(view[start : start + chunk_bytes]))


def _publish_once(
    target: str, ca_pem: bytes, token: str, data: bytes, digest: str, seconds: float
) -> pb.PublishModelResponse:
    # A fresh channel per attempt: after UNAVAILABLE the old one may still hold a dead connection.
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    options = [("grpc.max_send_message_length", CHUNK_BYTES + 4096)]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        stub = rpc.FleetAdminStub(channel)
        response: pb.PublishModelResponse = stub.PublishModel(
            chunks(data, digest), timeout=seconds, metadata=(("authorization", f"Bearer {token}"),)
        )
        return response


def _describe(err: grpc.RpcError, target: str, attempt: int, note: str = "") -> PublishError:
    code: grpc.StatusCode | None = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or ""
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    reason = next((str(v) for k, v in trailing or () if k == ERROR_KEY), None)
    name = code.name if code is not None else "UNKNOWN"
    what = _HINTS.get(code, "the gateway refused the artifact") if code is not None else "the call failed"
    said = " ".join(details.split())[:300]
    message = f"publishing to the fleet gateway at {target}: {what}: {name}"
    if reason:
        message += f" ({reason})"
    if said:
        message += f": {said}"
    if note:
        message += f" ({note})"
    return PublishError(message, code, reason, attempt)


_HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the gateway cannot be reached (or its TLS certificate is not trusted)",
    grpc.StatusCode.UNAUTHENTICATED: "the token was refused",
    grpc.StatusCode.PERMISSION_DENIED: "the token may not publish",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the upload did not finish in time",
    grpc.StatusCode.INVALID_ARGUMENT: "the gateway refused the artifact",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the artifact is larger than the gateway takes",
}


def _check_inputs(target: str, ca_pem: bytes, token: str, data: bytes) -> None:
    host, sep, port = target.rpartition(":")
    if not (0 < len(target) <= MAX_TARGET_CHARS and sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise PublishError(f"gateway: must be HOST:PORT with a port in 1..65535, got {target[:80]!r}")
    if not isinstance(ca_pem, bytes) or b"-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise PublishError("ca: must be a PEM certificate (the CA the gateway's certificate chains to)")
    # gRPC metadata values are printable ASCII; anything else would fail deep inside the call.
    if not (0 < len(token) <= MAX_TOKEN_CHARS and token.isascii() and token.isprintable()):
        raise PublishError(f"token: must be 1..{MAX_TOKEN_CHARS} printable ASCII characters")
    if " " in token:
        raise PublishError("token: must not contain spaces")
    if not isinstance(data, bytes) or not data:
        raise PublishError("artifact: must be non-empty bytes")

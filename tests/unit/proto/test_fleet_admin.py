"""The FleetAdmin publishing client against a real gRPC server over TLS: the stream it sends, what it retries
(UNAVAILABLE only, with growing waits on an injected sleep), what it never retries, and input it refuses
before dialing anything."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from fedfleet.models.artifact import digest_of
from fedfleet.proto.fleet_admin import CHUNK_BYTES, PublishError, RetryPolicy, publish_model
from fedfleet.proto.refusals import ERROR_KEY
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from fedfleet.security.certs import generate_ca, issue_server_cert

TOKEN = "ab" * 32
CA = generate_ca("test gateway CA")
SERVER = issue_server_cert(CA, ["127.0.0.1"])
#: Waits the client is told to make are recorded, never slept: no test depends on the clock.
NO_WAIT = RetryPolicy(attempts=4, attempt_seconds=30.0, initial_backoff=1.0, max_backoff=3.0)


@dataclass
class Recorder(rpc.FleetAdminServicer):  # type: ignore[misc]
    """A FleetAdmin that keeps what it was sent and fails the first `failures` calls with `code`."""

    failures: int = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    reason: str | None = None
    answer_digest: str | None = None
    hold: threading.Event | None = None
    calls: int = 0
    streams: list[list[pb.PublishModelChunk]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def PublishModel(self, request_iterator: Iterator[pb.PublishModelChunk], context: Any) -> pb.PublishModelResponse:
        self.calls += 1
        self.tokens.append(dict(context.invocation_metadata()).get("authorization", ""))
        if self.hold is not None:
            self.hold.wait(30)
        if self.calls <= self.failures:
            if self.reason:
                context.set_trailing_metadata(((ERROR_KEY, self.reason),))
            context.abort(self.code, f"refused on call {self.calls}")
        chunks = list(request_iterator)
        self.streams.append(chunks)
        header = chunks[0].header
        return pb.PublishModelResponse(digest=self.answer_digest or header.digest, size=header.size)


@pytest.fixture
def admin() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_FleetAdminServicer_to_server(recorder, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(SERVER.key_pem, SERVER.cert_pem)]))
    server.start()
    try:
        yield recorder, f"127.0.0.1:{port}"
    finally:
        if recorder.hold is not None:
            recorder.hold.set()
        server.stop(0)


def _artifact(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


def test_the_artifact_arrives_as_a_header_then_its_bytes_in_bounded_chunks(admin: tuple[Recorder, str]) -> None:
    recorder, target = admin
    data = _artifact(2 * CHUNK_BYTES + 1234)
    digest = publish_model(target, CA.cert_pem, TOKEN, data, policy=NO_WAIT, sleep=_never)
    assert digest == digest_of(data)
    (stream,) = recorder.streams
    header, *rest = stream
    assert header.WhichOneof("part") == "header"
    assert (header.header.digest, header.header.size) == (digest, len(data))
    assert all(c.WhichOneof("part") == "data" and 0 < len(c.data) <= CHUNK_BYTES for c in rest)
    assert b"".join(c.data for c in rest) == data
    assert recorder.tokens == [f"Bearer {TOKEN}"]


def test_unavailable_is_retried_with_growing_waits_until_it_works(admin: tuple[Recorder, str]) -> None:
    recorder, target = admin
    recorder.failures = 3
    waits: list[float] = []
    told: list[tuple[int, str]] = []
    data = _artifact(5000)
    digest = publish_model(
        target, CA.cert_pem, TOKEN, data, policy=NO_WAIT, sleep=waits.append,
        on_retry=lambda attempt, err, delay: told.append((attempt, err.reason or str(err.code))),
    )  # fmt: skip
    assert digest == digest_of(data) and recorder.calls == 4
    assert waits == [1.0, 2.0, 3.0]  # doubling, capped at max_backoff
    assert [attempt for attempt, _ in told] == [1, 2, 3]


def test_giving_up_after_the_last_attempt_says_so(admin: tuple[Recorder, str]) -> None:
    recorder, target = admin
    recorder.failures = 100
    waits: list[float] = []
    with pytest.raises(PublishError) as caught:
        publish_model(target, CA.cert_pem, TOKEN, _artifact(100), policy=NO_WAIT, sleep=waits.append)
    assert recorder.calls == NO_WAIT.attempts and len(waits) == NO_WAIT.attempts - 1
    err = caught.value
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.attempts == NO_WAIT.attempts
    assert target in str(err) and "gave up after 4 attempts" in str(err) and "refused on call 4" in str(err)


@pytest.mark.parametrize(
    ("code", "reason", "words"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "admin_token_invalid", "the token was refused"),
        (grpc.StatusCode.INVALID_ARGUMENT, "publish_rejected", "the gateway refused the artifact"),
        (grpc.StatusCode.PERMISSION_DENIED, None, "the token may not publish: PERMISSION_DENIED"),
    ],
)
def test_a_refusal_is_final_and_named(
    admin: tuple[Recorder, str], code: grpc.StatusCode, reason: str | None, words: str
) -> None:
    recorder, target = admin
    recorder.failures, recorder.code, recorder.reason = 1, code, reason
    waits: list[float] = []
    with pytest.raises(PublishError) as caught:
        publish_model(target, CA.cert_pem, TOKEN, _artifact(100), policy=NO_WAIT, sleep=waits.append)
    assert recorder.calls == 1 and waits == []
    assert caught.value.code == code and caught.value.reason == reason
    assert words in str(caught.value) and (reason is None or f"({reason})" in str(caught.value))
    assert "\n" not in str(caught.value)


def test_an_attempt_past_its_deadline_is_not_retried(admin: tuple[Recorder, str]) -> None:
    recorder, target = admin
    recorder.hold = threading.Event()  # the server never answers until the test ends
    policy = RetryPolicy(attempts=3, attempt_seconds=1.0, initial_backoff=0.0, max_backoff=0.0)
    with pytest.raises(PublishError) as caught:
        publish_model(target, CA.cert_pem, TOKEN, _artifact(100), policy=policy, sleep=_never)
    # At most one call reached the server (none if a busy machine took the whole second to connect).
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and recorder.calls <= 1


def test_a_gateway_answering_another_digest_is_an_error(admin: tuple[Recorder, str]) -> None:
    recorder, target = admin
    recorder.answer_digest = "sha256:" + "0" * 64
    with pytest.raises(PublishError, match="answered digest 'sha256:0000"):
        publish_model(target, CA.cert_pem, TOKEN, _artifact(100), policy=NO_WAIT, sleep=_never)


def test_an_untrusted_certificate_or_nothing_listening_is_unavailable(admin: tuple[Recorder, str]) -> None:
    recorder, target = admin
    other = generate_ca("someone else's CA")
    one = RetryPolicy(attempts=1)
    with pytest.raises(PublishError) as untrusted:
        publish_model(target, other.cert_pem, TOKEN, _artifact(100), policy=one, sleep=_never)
    assert untrusted.value.code == grpc.StatusCode.UNAVAILABLE and recorder.calls == 0
    assert "cannot be reached (or its TLS certificate is not trusted)" in str(untrusted.value)
    closed = _closed_port()
    with pytest.raises(PublishError) as refused:
        publish_model(f"127.0.0.1:{closed}", CA.cert_pem, TOKEN, _artifact(100), policy=one, sleep=_never)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE and f"127.0.0.1:{closed}" in str(refused.value)


@pytest.mark.parametrize(
    ("target", "ca", "token", "data", "message"),
    [
        ("gateway", CA.cert_pem, TOKEN, b"x", "gateway: must be HOST:PORT"),
        ("gateway:0", CA.cert_pem, TOKEN, b"x", "gateway: must be HOST:PORT"),
        ("gateway:70000", CA.cert_pem, TOKEN, b"x", "gateway: must be HOST:PORT"),
        ("g:1", b"not a certificate", TOKEN, b"x", "ca: must be a PEM certificate"),
        ("g:1", CA.cert_pem, "", b"x", "token: must be 1..1024 printable ASCII"),
        ("g:1", CA.cert_pem, "ab\ncd", b"x", "token: must be 1..1024 printable ASCII"),
        ("g:1", CA.cert_pem, "ab cd", b"x", "token: must not contain spaces"),
        ("g:1", CA.cert_pem, TOKEN, b"", "artifact: must be non-empty bytes"),
    ],
)
def test_bad_input_is_refused_before_any_call(target: str, ca: bytes, token: str, data: bytes, message: str) -> None:
    with pytest.raises(PublishError) as caught:
        publish_model(target, ca, token, data, sleep=_never)
    assert message in str(caught.value) and caught.value.code is None and caught.value.attempts == 0


def test_retry_policy_rejects_nonsense() -> None:
    for bad in ({"attempts": 0}, {"attempt_seconds": 0}, {"initial_backoff": 5, "max_backoff": 1}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def _never(seconds: float) -> None:
    raise AssertionError(f"no wait expected, asked for {seconds}s")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

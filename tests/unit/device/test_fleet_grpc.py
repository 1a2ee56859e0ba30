"""The gRPC fleet link's own rules, against a small misbehaving server: a watch stream that goes quiet past the
gateway's keepalive promise is declared dead, a download whose chunks skip an offset is broken, refusals become
LinkErrors that say whether to retry, stop or drop the call, and every activation failure reason has its wire
value. (Calls against the real gateway are in tests/integration/test_rollout_fleet_grpc.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedfleet.device.fleet_grpc import GrpcFleetLink, failure_code, link_error, offer_of
from fedfleet.device.model_updates import LOAD_ERROR, LinkError
from fedfleet.proto.refusals import ERROR_KEY
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as pb_grpc
from fedfleet.security.certs import TlsFiles, write_tls_files
from fedfleet.security.releases import RejectionReason
from fedfleet.security.signing import SigningKey
from rollout_support import artifact_bytes, run_async, signed_release


class Misbehaving(pb_grpc.FleetServicer):  # type: ignore[misc]
    """One keepalive promising the next event within a second, then silence; chunks that skip bytes."""

    async def WatchAssignment(self, request: Any, context: Any) -> AsyncIterator[pb.AssignmentEvent]:
        yield pb.AssignmentEvent(keepalive=pb.WatchKeepalive(next_within_seconds=1.0))
        await asyncio.sleep(3600)

    async def DownloadArtifact(self, request: Any, context: Any) -> AsyncIterator[pb.ArtifactChunk]:
        yield pb.ArtifactChunk(offset=request.offset, data=b"abcd", total_size=100)
        yield pb.ArtifactChunk(offset=request.offset + 10, data=b"efgh", total_size=100)

    async def CheckIn(self, request: Any, context: Any) -> pb.FleetCheckInResponse:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "nothing published yet", trailing_metadata=((ERROR_KEY, "no_fleet_view"),)
        )


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TlsFiles]:
    files = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    write_tls_files(files, "test", ["127.0.0.1"])
    yield files


async def serving(tls: TlsFiles) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_FleetServicer_to_server(Misbehaving(), server)
    credentials = grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


@run_async
async def test_a_watch_that_goes_quiet_past_its_keepalive_is_declared_dead(tls: TlsFiles) -> None:
    server, port = await serving(tls)
    try:
        async with GrpcFleetLink(
            f"127.0.0.1:{port}", token="t", root_certificates=tls.ca_cert.read_bytes(), stream_margin_seconds=0.1
        ) as link:
            with pytest.raises(LinkError, match="brought nothing") as dead:
                await asyncio.wait_for(anext(aiter(link.watch({}))), 60)
            assert dead.value.transient
    finally:
        await server.stop(0)


@run_async
async def test_a_download_whose_chunks_skip_bytes_is_broken(tls: TlsFiles) -> None:
    server, port = await serving(tls)
    try:
        async with GrpcFleetLink(f"127.0.0.1:{port}", token="t", root_certificates=tls.ca_cert.read_bytes()) as link:
            received: list[bytes] = []
            with pytest.raises(LinkError, match="chunk at offset 17 of 100 bytes, expected offset 11") as broken:
                async for chunk in link.download("sha256:x", 7):
                    received.append(chunk)
            assert received == [b"abcd"] and broken.value.transient
    finally:
        await server.stop(0)


@run_async
async def test_a_refusal_carries_its_reason(tls: TlsFiles) -> None:
    server, port = await serving(tls)
    try:
        async with GrpcFleetLink(f"127.0.0.1:{port}", token="t", root_certificates=tls.ca_cert.read_bytes()) as link:
            with pytest.raises(LinkError) as refused:
                await link.check_in({}, None)
        assert refused.value.reason == "no_fleet_view" and refused.value.transient and not refused.value.fatal
    finally:
        await server.stop(0)


class _Refusal(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, reason: str | None) -> None:
        metadata = grpc.aio.Metadata(*([(ERROR_KEY, reason)] if reason else []))
        super().__init__(code, grpc.aio.Metadata(), metadata, details="refused")


@pytest.mark.parametrize(
    ("code", "reason", "transient", "fatal"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, True, False),  # connection lost
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, True, False),
        (grpc.StatusCode.UNAUTHENTICATED, "token_expired", False, True),
        (grpc.StatusCode.PERMISSION_DENIED, None, False, True),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad_attributes", False, True),  # its own attributes: no retry helps
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too_many_watches", True, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "report_too_frequent", False, False),  # drop the report
        (grpc.StatusCode.FAILED_PRECONDITION, "not_assigned", False, False),
        (grpc.StatusCode.NOT_FOUND, "unknown_artifact", False, False),
    ],
)
def test_refusals_say_whether_to_retry_stop_or_drop(
    code: grpc.StatusCode, reason: str | None, transient: bool, fatal: bool
) -> None:
    error = link_error(_Refusal(code, reason))
    assert (error.transient, error.fatal, error.reason) == (transient, fatal, reason)


def test_every_activation_failure_reason_has_its_own_wire_value() -> None:
    enum = pb.ModelHealthReport.ActivationFailure
    for reason in [*RejectionReason, LOAD_ERROR]:
        assert enum.Name(failure_code(str(reason))) == str(reason).upper()


def test_an_assignment_from_the_wire() -> None:
    key = SigningKey.generate()
    data = artifact_bytes(seed=1)
    signed = signed_release(data, key)
    wire = pb.ModelAssignment(
        version=signed.record.version,
        role=pb.ModelAssignment.CANARY,
        rollout="demo",
        revision=3,
        generation=9,
        size=len(data),
        release=pb.SignedRelease(record=signed.record.canonical_bytes(), signature=signed.signature, key_id=key.key_id),
    )
    offer = offer_of(wire)
    assert offer is not None
    assert (offer.version, offer.role, offer.rollout, offer.revision, offer.generation) == (
        signed.record.version,
        "canary",
        "demo",
        3,
        9,
    )
    assert offer.release == signed
    # A record that is not canonical, or names another key than it came with, cannot be checked: no release.
    wire.release.record = signed.record.canonical_bytes() + b" "
    assert offer_of(wire).release is None  # type: ignore[union-attr]
    wire.release.record = signed.record.canonical_bytes()
    wire.release.key_id = SigningKey.generate().key_id
    assert offer_of(wire).release is None  # type: ignore[union-attr]
    assert offer_of(pb.ModelAssignment()) is None  # no version for this device yet

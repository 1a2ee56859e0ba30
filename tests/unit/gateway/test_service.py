"""Refusals over real gRPC with TLS: each bad input gets its precise status code and reason, and is counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedfleet.gateway.service import FleetAdminService
from fedfleet.proto.refusals import ERROR_KEY
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from fedfleet.security.tokens import issue_token, job_identity, new_key
from gateway_support import (
    FLEET,
    LiveGateway,
    artifact,
    digest_of,
    make_gateway,
    release,
    start_gateway,
    view_json,
)

Code = grpc.StatusCode


def _one_character_off(secret: str) -> str:
    """The secret with its last hex digit changed (to another one: a secret may end in any digit)."""
    return secret[:-1] + ("1" if secret.endswith("0") else "0")


async def refusal(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    reason = dict(info.value.trailing_metadata() or ()).get(ERROR_KEY, "")
    return info.value.code(), str(reason)


async def stream_refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    async def drain() -> None:
        async for _ in call:
            pass

    return await refusal(drain())


def release_message(data: bytes) -> pb.SignedRelease:
    parts = release(data)
    return pb.SignedRelease(record=parts.record, signature=parts.signature, key_id=parts.key_id)


async def put_view(live: LiveGateway, admin: Any, view: bytes, *blobs: bytes) -> pb.PutFleetViewResponse:
    releases = {digest_of(b): release_message(b) for b in blobs}
    return await admin.PutFleetView(
        pb.PutFleetViewRequest(fleet=FLEET, view=view, releases=releases), metadata=live.admin_metadata()
    )


def run(tmp_path: Path, scenario: Callable[[LiveGateway], Awaitable[None]], **config: Any) -> LiveGateway:
    async def main() -> LiveGateway:
        live = await start_gateway(tmp_path, **config)
        try:
            await scenario(live)
        finally:
            await live.app.stop()
        return live

    return asyncio.run(main())


def refusals(live: LiveGateway, method: str, reason: str) -> float | None:
    return live.app.registry.get_sample_value("fedfleet_gateway_refusals_total", {"method": method, "reason": reason})


def test_credentials_are_refused_by_what_is_wrong_with_them(tmp_path: Path) -> None:
    async def scenario(live: LiveGateway) -> None:
        async with live.channel() as channel:
            fleet = rpc.FleetStub(channel)
            check_in = pb.FleetCheckInRequest()

            def bearer(token: str) -> tuple[tuple[str, str], ...]:
                return (("authorization", f"Bearer {token}"),)

            now = time.time()
            cases = {
                "no token": ((), Code.UNAUTHENTICATED, "token_missing"),
                "garbage": (bearer("not-a-token"), Code.UNAUTHENTICATED, "token_malformed"),
                "expired": (
                    bearer(issue_token(live.token_key, "fleet:default", "d", 60, now=now - 3600)),
                    Code.UNAUTHENTICATED,
                    "token_expired",
                ),
                "another key": (
                    bearer(issue_token(new_key(), "fleet:default", "d", 60)),
                    Code.UNAUTHENTICATED,
                    "token_bad_signature",
                ),
                "a fleet not served here": (live.device_metadata("d", fleet="elsewhere"), Code.PERMISSION_DENIED,
                                            "token_wrong_fleet"),
                "a job's token": (
                    bearer(issue_token(live.token_key, job_identity("default"), "d", 60)),
                    Code.PERMISSION_DENIED,
                    "token_wrong_fleet",
                ),
            }  # fmt: skip
            for case, (metadata, code, reason) in cases.items():
                assert await refusal(fleet.CheckIn(check_in, metadata=metadata)) == (code, reason), case

            admin = rpc.FleetAdminStub(channel)
            summary = pb.GetFleetSummaryRequest(fleet=FLEET)
            for metadata, reason in (
                ((), "token_missing"),
                (bearer(_one_character_off(live.admin_secret)), "admin_token_invalid"),
                (live.device_metadata("d"), "admin_token_invalid"),
            ):
                assert await refusal(admin.GetFleetSummary(summary, metadata=metadata)) == (
                    Code.UNAUTHENTICATED,
                    reason,
                )
            ok = await admin.GetFleetSummary(summary, metadata=live.admin_metadata())
            assert ok.fleet == FLEET and ok.generation == 0

    live = run(tmp_path, scenario)
    assert refusals(live, "CheckIn", "token_wrong_fleet") == 2
    assert refusals(live, "GetFleetSummary", "admin_token_invalid") == 2


def test_device_requests_are_refused_with_precise_codes(tmp_path: Path) -> None:
    v1, v2 = artifact("v1"), artifact("v2", 70_000)
    d1, d2 = digest_of(v1), digest_of(v2)

    async def scenario(live: LiveGateway) -> None:
        live.store.put(v1)
        live.store.put(v2)
        async with live.channel() as channel:
            fleet, admin = rpc.FleetStub(channel), rpc.FleetAdminStub(channel)
            md = live.device_metadata("dev-1")
            assert await refusal(fleet.GetAssignment(pb.GetAssignmentRequest(), metadata=md)) == (
                Code.UNAVAILABLE,
                "no_fleet_view",
            )
            assert await stream_refusal(fleet.WatchAssignment(pb.WatchAssignmentRequest(), metadata=md)) == (
                Code.UNAVAILABLE,
                "no_fleet_view",
            )
            await put_view(live, admin, view_json(d1), v1)

            too_many = pb.FleetCheckInRequest(attributes={f"k{i}": "v" for i in range(40)})
            assert await refusal(fleet.CheckIn(too_many, metadata=md)) == (Code.INVALID_ARGUMENT, "bad_attributes")
            huge = pb.FleetCheckInRequest(attributes={"blob": "x" * 200_000})
            assert await refusal(fleet.CheckIn(huge, metadata=md)) == (Code.INVALID_ARGUMENT, "malformed_message")

            bad = {
                "accuracy 7": pb.ModelHealthReport(version=d1, accuracy=7.0, loss=0.1, examples=5),
                "negative latency": pb.ModelHealthReport(
                    version=d1, accuracy=0.9, loss=0.1, inference_latency_ms=-2.0, examples=5
                ),
                "NaN loss": pb.ModelHealthReport(version=d1, accuracy=0.9, loss=float("nan"), examples=5),
                "an enum value no one knows": pb.ModelHealthReport(version=d1, activation_failure=42),  # type: ignore[arg-type]
            }
            for case, report in bad.items():
                assert await refusal(fleet.ReportModelHealth(report, metadata=md)) == (
                    Code.INVALID_ARGUMENT,
                    "bad_health_report",
                ), case
            not_mine = pb.ModelHealthReport(version=d2, accuracy=0.9, loss=0.1, examples=5)
            assert await refusal(fleet.ReportModelHealth(not_mine, metadata=md)) == (
                Code.FAILED_PRECONDITION,
                "not_assigned",
            )
            ok = pb.ModelHealthReport(version=d1, accuracy=0.9, loss=0.1, inference_latency_ms=1.0, examples=5)
            assert (await fleet.ReportModelHealth(ok, metadata=md)).accepted
            assert await refusal(fleet.ReportModelHealth(ok, metadata=md)) == (
                Code.RESOURCE_EXHAUSTED,
                "report_too_frequent",
            )

            for request, expected in (
                (pb.DownloadArtifactRequest(digest=d2), (Code.NOT_FOUND, "unknown_artifact")),  # not in the view
                (pb.DownloadArtifactRequest(digest=d1, offset=len(v1) + 1), (Code.OUT_OF_RANGE, "offset_out_of_range")),
            ):
                assert await stream_refusal(fleet.DownloadArtifact(request, metadata=md)) == expected

    live = run(tmp_path, scenario)
    accuracy = live.app.registry.get_sample_value(
        "fedfleet_gateway_model_accuracy_count", {"fleet": FLEET, "version": digest_of(v1)}
    )
    assert accuracy == 1, "only the one good report reached the accuracy data"
    assert refusals(live, "CheckIn", "malformed_message") == 1
    assert refusals(live, "ReportModelHealth", "bad_health_report") == 4


def test_admin_requests_are_refused_with_precise_codes(tmp_path: Path) -> None:
    v1 = artifact("v1", 10_000)
    d1 = digest_of(v1)

    async def scenario(live: LiveGateway) -> None:
        async with live.channel() as channel:
            admin = rpc.FleetAdminStub(channel)
            md = live.admin_metadata()

            async def chunks(*messages: pb.PublishModelChunk) -> Any:
                for message in messages:
                    yield message

            header = pb.PublishModelChunk(header=pb.PublishModelHeader(digest=d1, size=len(v1)))
            no_header = admin.PublishModel(chunks(pb.PublishModelChunk(data=v1)), metadata=md)
            assert await refusal(no_header) == (Code.INVALID_ARGUMENT, "bad_request")
            wrong = admin.PublishModel(chunks(header, pb.PublishModelChunk(data=v1[:-1] + b"?")), metadata=md)
            assert await refusal(wrong) == (Code.INVALID_ARGUMENT, "publish_rejected")
            assert await refusal(put_view(live, admin, view_json(d1), v1)) == (
                Code.FAILED_PRECONDITION,
                "artifact_missing",
            )
            published = await admin.PublishModel(
                chunks(header, pb.PublishModelChunk(data=v1[:4000]), pb.PublishModelChunk(data=v1[4000:])), metadata=md
            )
            assert (published.digest, published.size) == (d1, len(v1))
            assert live.store.read_chunk(d1, 0, len(v1)) == v1

            assert (await put_view(live, admin, view_json(d1, generation=3), v1)).generation == 3
            assert await refusal(put_view(live, admin, view_json(d1, generation=2))) == (
                Code.FAILED_PRECONDITION,
                "stale_fleet_view",
            )
            other = pb.PutFleetViewRequest(fleet="nowhere", view=view_json(d1, generation=4, fleet="nowhere"))
            assert await refusal(admin.PutFleetView(other, metadata=md)) == (Code.NOT_FOUND, "unknown_fleet")
            assert await refusal(put_view(live, admin, b"[]")) == (Code.INVALID_ARGUMENT, "bad_fleet_view")

    live = run(tmp_path, scenario)
    assert refusals(live, "PutFleetView", "stale_fleet_view") == 1


def test_malformed_bytes_are_refused_and_counted_once(tmp_path: Path) -> None:
    async def scenario(live: LiveGateway) -> None:
        async with live.channel() as channel:
            raw_unary = channel.unary_unary("/fedfleet.v1.Fleet/CheckIn")
            md = live.device_metadata("dev-1")
            assert await refusal(raw_unary(b"\xff\xff\xff", metadata=md)) == (
                Code.INVALID_ARGUMENT,
                "malformed_message",
            )
            raw_stream = channel.stream_unary("/fedfleet.v1.FleetAdmin/PublishModel")

            async def garbage() -> Any:
                yield pb.PublishModelChunk(
                    header=pb.PublishModelHeader(digest=digest_of(b"x"), size=10)
                ).SerializeToString()
                yield b"\xff\xff\xff"

            assert await refusal(raw_stream(garbage(), metadata=live.admin_metadata())) == (
                Code.INVALID_ARGUMENT,
                "malformed_message",
            )

    live = run(tmp_path, scenario)
    assert refusals(live, "CheckIn", "malformed_message") == 1
    assert refusals(live, "PublishModel", "malformed_message") == 1


# --- the publish token: PublishModel, and nothing else ---------------------------------------------------


async def refusal_said(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, str]:
    """The status code, the reason and the message of a refused call."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    reason = dict(info.value.trailing_metadata() or ()).get(ERROR_KEY, "")
    return info.value.code(), str(reason), info.value.details() or ""


async def publish(admin: Any, data: bytes, metadata: tuple[tuple[str, str], ...]) -> pb.PublishModelResponse:
    async def chunks() -> Any:
        yield pb.PublishModelChunk(header=pb.PublishModelHeader(digest=digest_of(data), size=len(data)))
        yield pb.PublishModelChunk(data=data)

    response: pb.PublishModelResponse = await admin.PublishModel(chunks(), metadata=metadata)
    return response


def test_the_publish_token_publishes_and_may_not_touch_a_fleet(tmp_path: Path) -> None:
    v1 = artifact("v1", 10_000)
    d1 = digest_of(v1)

    async def scenario(live: LiveGateway) -> None:
        async with live.channel() as channel:
            admin = rpc.FleetAdminStub(channel)
            md = live.publish_metadata()
            published = await publish(admin, v1, md)
            assert (published.digest, published.size) == (d1, len(v1))
            assert live.store.read_chunk(d1, 0, len(v1)) == v1

            # The calls that decide and reveal what a fleet runs are the admin's: refused, and nothing changes.
            releases = {d1: release_message(v1)}
            rewrite = pb.PutFleetViewRequest(fleet=FLEET, view=view_json(d1), releases=releases)
            summary = pb.GetFleetSummaryRequest(fleet=FLEET)
            for method, call in (
                ("PutFleetView", admin.PutFleetView(rewrite, metadata=md)),
                ("GetFleetSummary", admin.GetFleetSummary(summary, metadata=md)),
            ):
                code, reason, message = await refusal_said(call)
                assert (code, reason) == (Code.PERMISSION_DENIED, "publish_token_only"), method
                assert message.startswith(f"{method}: ") and "only publish" in message, message
            assert live.app.gateway.states.get(FLEET) is None  # no view was written

            # The admin token still makes every call.
            assert (await put_view(live, admin, view_json(d1), v1)).generation == 1
            seen = await admin.GetFleetSummary(summary, metadata=live.admin_metadata())
            assert (seen.fleet, seen.generation) == (FLEET, 1)
            v2 = artifact("v2", 10_000)
            assert (await publish(admin, v2, live.admin_metadata())).digest == digest_of(v2)

            # A token that is neither is not a caller at all, whichever call it tries.
            near = (("authorization", f"Bearer {_one_character_off(live.publish_secret)}"),)
            assert await refusal(publish(admin, v1, near)) == (Code.UNAUTHENTICATED, "admin_token_invalid")
            assert await refusal(admin.PutFleetView(rewrite, metadata=near)) == (
                Code.UNAUTHENTICATED,
                "admin_token_invalid",
            )

    live = run(tmp_path, scenario)
    assert refusals(live, "PutFleetView", "publish_token_only") == 1
    assert refusals(live, "GetFleetSummary", "publish_token_only") == 1
    assert refusals(live, "PublishModel", "admin_token_invalid") == 1
    assert refusals(live, "PutFleetView", "admin_token_invalid") == 1


def test_without_a_publish_secret_only_the_admin_token_is_a_caller(tmp_path: Path) -> None:
    v1 = artifact("v1", 10_000)

    async def scenario(live: LiveGateway) -> None:
        async with live.channel() as channel:
            admin = rpc.FleetAdminStub(channel)
            # live.publish_secret is one this gateway was never given (its config names no publishToken).
            assert await refusal(publish(admin, v1, live.publish_metadata())) == (
                Code.UNAUTHENTICATED,
                "admin_token_invalid",
            )
            assert (await publish(admin, v1, live.admin_metadata())).digest == digest_of(v1)

    live = run(tmp_path, scenario, publish_secret=False)
    assert refusals(live, "PublishModel", "admin_token_invalid") == 1


def test_a_publish_secret_equal_to_the_admin_secret_is_refused(tmp_path: Path) -> None:
    gateway, _ = make_gateway(tmp_path)
    secret = new_key().hex()
    with pytest.raises(ValueError, match="publish secret: must differ from the admin secret"):
        FleetAdminService(gateway, secret, secret)
    FleetAdminService(gateway, secret, new_key().hex())  # two secrets: fine

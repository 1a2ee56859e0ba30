"""The fleet gateway over real gRPC with TLS on 127.0.0.1: the admin publishes models and views, a few devices
check in and watch, a view change reaches exactly the devices it moves, an abort brings them back, downloads
resume at an offset, health reports land in the metrics, and bad calls are refused.

Nothing here waits on the clock except for an awaited condition with a generous bound: every step waits for
the event it expects (a message on a stream), never for a sleep to pass.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from gateway_support import (
    FLEET,
    LiveGateway,
    artifact,
    canary_and_stable_devices,
    digest_of,
    release,
    start_gateway,
    view_json,
)

#: An upper bound for an awaited event; on an idle machine each arrives within milliseconds.
EVENT_BOUND_SECONDS = 30.0
#: Four devices the rollout's weight 50 puts in the canary, four it leaves on stable.
CANARY, STABLE = canary_and_stable_devices(50.0, count=4)
DEVICES = sorted(CANARY + STABLE)
ATTRIBUTES = {"deviceClass": "phone", "os": "android", "region": "eu"}


async def publish(live: LiveGateway, admin: Any, data: bytes) -> str:
    async def chunks() -> Any:
        yield pb.PublishModelChunk(header=pb.PublishModelHeader(digest=digest_of(data), size=len(data)))
        for at in range(0, len(data), 100_000):
            yield pb.PublishModelChunk(data=data[at : at + 100_000])

    reply = await admin.PublishModel(chunks(), metadata=live.admin_metadata())
    return str(reply.digest)


async def put_view(live: LiveGateway, admin: Any, view: bytes, *blobs: bytes) -> int:
    releases = {}
    for blob in blobs:
        parts = release(blob)
        releases[digest_of(blob)] = pb.SignedRelease(
            record=parts.record, signature=parts.signature, key_id=parts.key_id
        )
    reply = await admin.PutFleetView(
        pb.PutFleetViewRequest(fleet=FLEET, view=view, releases=releases), metadata=live.admin_metadata()
    )
    return int(reply.generation)


class Device:
    """One device's open WatchAssignment stream, read into a queue of assignments (keepalives counted apart)."""

    def __init__(self, live: LiveGateway, channel: Any, device_id: str) -> None:
        self.id = device_id
        self.stub = rpc.FleetStub(channel)
        self.metadata = live.device_metadata(device_id)
        self.assignments: asyncio.Queue[pb.ModelAssignment] = asyncio.Queue()
        self.keepalives = 0
        self._call = self.stub.WatchAssignment(pb.WatchAssignmentRequest(attributes=ATTRIBUTES), metadata=self.metadata)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self._call:
            if event.WhichOneof("event") == "assignment":
                await self.assignments.put(event.assignment)
            else:
                self.keepalives += 1

    async def next_assignment(self) -> pb.ModelAssignment:
        return await asyncio.wait_for(self.assignments.get(), EVENT_BOUND_SECONDS)

    def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()


async def download(stub: Any, metadata: Any, digest: str, offset: int, stop_after: int | None = None) -> bytes:
    """Bytes of the artifact from `offset`; with `stop_after`, hang up once that many chunks arrived."""
    received = b""
    call = stub.DownloadArtifact(pb.DownloadArtifactRequest(digest=digest, offset=offset), metadata=metadata)
    count = 0
    async for chunk in call:
        assert chunk.offset == offset + len(received) and len(chunk.data) <= 256 * 1024
        received += chunk.data
        count += 1
        if stop_after is not None and count >= stop_after:
            call.cancel()
            break
    return received


def test_devices_follow_their_assignment_download_report_and_are_refused_when_wrong(tmp_path: Path) -> None:
    stable_model, candidate_model = artifact("stable", 40_000), artifact("candidate", 700_000)
    d1, d2 = digest_of(stable_model), digest_of(candidate_model)
    canary = set(CANARY)

    async def scenario() -> None:
        live = await start_gateway(tmp_path, watch_keepalive_seconds=0.2)
        try:
            async with live.channel() as channel:
                admin = rpc.FleetAdminStub(channel)
                assert await publish(live, admin, stable_model) == d1
                assert await publish(live, admin, candidate_model) == d2
                assert await put_view(live, admin, view_json(d1), stable_model) == 1

                fleet = rpc.FleetStub(channel)
                for device_id in DEVICES:
                    reply = await fleet.CheckIn(
                        pb.FleetCheckInRequest(attributes=ATTRIBUTES, current_version=d1, app_version="3.1"),
                        metadata=live.device_metadata(device_id),
                    )
                    assert reply.assignment.version == d1 and reply.check_in_interval_seconds == 60.0
                    assert reply.assignment.release.record and reply.assignment.size == len(stable_model)

                devices = [Device(live, channel, d) for d in DEVICES]
                for device in devices:
                    first = await device.next_assignment()
                    assert first.version == d1 and first.role == pb.ModelAssignment.OUTSIDE

                # The rollout starts: half the fleet moves to the candidate, the rest learns its new role.
                await put_view(live, admin, view_json(d1, d2, weight=50.0, generation=2), candidate_model)
                for device in devices:
                    moved = await device.next_assignment()
                    expected = d2 if device.id in canary else d1
                    assert (moved.version, moved.generation, moved.rollout) == (expected, 2, "mnist")
                    if device.id in canary:
                        assert moved.role == pb.ModelAssignment.CANARY and moved.size == len(candidate_model)
                        assert moved.release.key_id and moved.release.signature

                # A canary downloads in two goes: the connection drops after a chunk, the rest resumes.
                downloader = devices[[d.id for d in devices].index(sorted(canary)[0])]
                head = await download(fleet, downloader.metadata, d2, 0, stop_after=1)
                assert 0 < len(head) < len(candidate_model)
                tail = await download(fleet, downloader.metadata, d2, len(head))
                assert head + tail == candidate_model

                report = pb.ModelHealthReport(
                    version=d2, accuracy=0.93, loss=0.21, inference_latency_ms=0.8, examples=50, attributes=ATTRIBUTES
                )
                assert (await fleet.ReportModelHealth(report, metadata=downloader.metadata)).accepted
                wrong = pb.ModelHealthReport(version=d2, accuracy=0.5, loss=1.0, examples=5, attributes=ATTRIBUTES)
                stayed = next(d for d in devices if d.id not in canary)
                try:
                    await fleet.ReportModelHealth(wrong, metadata=stayed.metadata)
                    raise AssertionError("a report on a version the device is not assigned must be refused")
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION

                # The analysis fails: weight 0, and every canary is told to go back, at once.
                await put_view(live, admin, view_json(d1, d2, weight=0.0, generation=3), candidate_model)
                for device in devices:
                    if device.id in canary:
                        back = await device.next_assignment()
                        assert (back.version, back.role) == (d1, pb.ModelAssignment.STABLE)
                assert all(d.assignments.empty() for d in devices), "devices that did not move heard nothing"

                # Quiet streams stay alive with keepalives.
                async def keepalive_seen() -> None:
                    while stayed.keepalives == 0:
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(keepalive_seen(), EVENT_BOUND_SECONDS)

                summary = await admin.GetFleetSummary(
                    pb.GetFleetSummaryRequest(fleet=FLEET), metadata=live.admin_metadata()
                )
                assert summary.generation == 3
                assert sum(c.devices for c in summary.devices) == len(DEVICES)
                for device in devices:
                    device.close()

            registry = live.app.registry
            assert registry.get_sample_value("fedfleet_gateway_checkins_total", {"fleet": FLEET}) == len(DEVICES)
            assert (
                registry.get_sample_value("fedfleet_gateway_model_accuracy_count", {"fleet": FLEET, "version": d2}) == 1
            )
            url = f"http://127.0.0.1:{live.app.http_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
            assert f'fedfleet_gateway_health_reports_total{{fleet="{FLEET}",outcome="ok",version="{d2}"}} 1.0' in text
            assert 'fedfleet_gateway_refusals_total{method="ReportModelHealth",reason="not_assigned"} 1.0' in text
        finally:
            await live.app.stop()
        assert registry.get_sample_value("fedfleet_gateway_watch_streams") == 0

    asyncio.run(scenario())


def test_a_restarted_gateway_serves_the_same_view_to_reconnecting_devices(tmp_path: Path) -> None:
    model = artifact("stable", 5_000)

    async def scenario() -> None:
        first = await start_gateway(tmp_path)
        first.store.put(model)
        async with first.channel() as channel:
            await put_view(first, rpc.FleetAdminStub(channel), view_json(digest_of(model), generation=9), model)
            watch = rpc.FleetStub(channel).WatchAssignment(
                pb.WatchAssignmentRequest(), metadata=first.device_metadata("phone-1")
            )
            assert (await asyncio.wait_for(watch.read(), EVENT_BOUND_SECONDS)).assignment.generation == 9
            await first.app.stop()
            ended = await asyncio.wait_for(watch.read(), EVENT_BOUND_SECONDS)
            assert ended is grpc.aio.EOF or watch.done(), "shutdown ends the stream: the device reconnects"

        second = await start_gateway(tmp_path)  # the same state dir and artifact volume
        try:
            async with second.channel() as channel:
                answer = await rpc.FleetStub(channel).GetAssignment(
                    pb.GetAssignmentRequest(), metadata=second.device_metadata("phone-1")
                )
                assert (answer.version, answer.generation) == (digest_of(model), 9)
        finally:
            await second.app.stop()

    asyncio.run(scenario())


def test_a_burst_of_reconnecting_watches_is_queued_not_cancelled(tmp_path: Path) -> None:
    """More streams at once than grpc's default of 1000 pending calls (a fleet reconnecting after a restart)."""
    model = artifact("stable", 2_000)
    streams = 1_200

    async def scenario() -> None:
        live = await start_gateway(tmp_path)
        live.store.put(model)
        live.app.gateway.put_fleet_view(FLEET, view_json(digest_of(model)), {digest_of(model): release(model)})
        channels = [live.channel() for _ in range(4)]
        tokens = [live.device_metadata(f"dev-{i}") for i in range(streams)]
        try:

            async def first_assignment(i: int) -> str:
                call = rpc.FleetStub(channels[i % 4]).WatchAssignment(pb.WatchAssignmentRequest(), metadata=tokens[i])
                event = await call.read()
                call.cancel()
                return str(event.assignment.version)

            versions = await asyncio.wait_for(
                asyncio.gather(*(first_assignment(i) for i in range(streams))), EVENT_BOUND_SECONDS * 4
            )
            assert versions == [digest_of(model)] * streams
        finally:
            for channel in channels:
                await channel.close()
            await live.app.stop()

    asyncio.run(scenario())

"""Who may talk to the aggregator, who gets selected, and the standard services beside it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_harness import Pki, join, make_job, make_pki, running, wait_task
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedfleet.device.client import AggregatorError, Capabilities
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.proto.v1 import aggregator_pb2_grpc as pb_grpc
from fedfleet.security.tokens import new_key


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def test_credentials_are_required_and_must_be_this_jobs(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with running(make_job(name="auth"), tmp_path, pki) as h:
            check_in = pb.CheckInRequest(device_id="dev-1", consent=True)

            async def refused(metadata: tuple[tuple[str, str], ...], device: str = "dev-1") -> grpc.aio.AioRpcError:
                async with grpc.aio.secure_channel(h.target, grpc.ssl_channel_credentials(pki.ca_pem)) as channel:
                    stub = pb_grpc.AggregatorStub(channel)
                    request = pb.CheckInRequest(device_id=device, consent=True)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.CheckIn(request, metadata=metadata, timeout=5)
                    return err.value

            def bearer(token: str) -> tuple[tuple[str, str], ...]:
                return (("authorization", f"Bearer {token}"),)

            err = await refused(())
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "no device token" in (err.details() or "")
            err = await refused(bearer("not-a-token"))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "not a v1 token" in (err.details() or "")
            forged = h.token("dev-1", key=new_key())
            err = await refused(bearer(forged))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "signature is invalid" in (err.details() or "")
            other_job_other_key = h.token("dev-1", job="other-job", key=new_key())
            err = await refused(bearer(other_job_other_key))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "token is for 'other-job', not 'auth'" in (err.details() or "")
            other_job_same_key = h.token("dev-1", job="other-job")
            err = await refused(bearer(other_job_same_key))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "other-job" in (err.details() or "")
            expired = h.token("dev-1", ttl=1)
            await asyncio.sleep(1.05)
            err = await refused(bearer(expired))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "expired" in (err.details() or "")
            err = await refused(bearer(h.token("dev-2")), device="dev-1")
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "does not match the token's device 'dev-2'" in (err.details() or "")

            # Every call is guarded, not only CheckIn: an anonymous upload never reaches the round.
            async with grpc.aio.secure_channel(h.target, grpc.ssl_channel_credentials(pki.ca_pem)) as channel:
                stub = pb_grpc.AggregatorStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as upload:
                    await stub.UploadUpdate(iter([pb.UpdateChunk(data=b"x")]), timeout=5)
                assert upload.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as poll:
                    await stub.GetTask(pb.GetTaskRequest(), timeout=5)
                assert poll.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert h.metric("fedfleet_updates_rejected_total", reason="corrupt") == 0

            # A valid token works, and a plaintext client cannot talk to the TLS port at all.
            ok = h.client("dev-1")
            assert (await ok.check_in(consent=True, capabilities=Capabilities())).job == "auth"
            async with grpc.aio.insecure_channel(h.target) as plain:
                with pytest.raises(grpc.aio.AioRpcError) as err_plain:
                    await pb_grpc.AggregatorStub(plain).CheckIn(check_in, metadata=bearer(h.token("dev-1")), timeout=3)
                assert err_plain.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_devices_without_consent_are_never_selected(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        job = make_job(name="consent", rounds=2, clients=3)
        async with running(job, tmp_path, pki, min_devices=3) as h:
            willing = [h.client(f"dev-yes-{i}") for i in range(3)]
            unwilling = [h.client(f"dev-no-{i}") for i in range(5)]
            for c in unwilling:
                await join(c, consent=False)
            for c in willing:
                await join(c)
            for round_number in (1, 2):
                tasks = await asyncio.gather(*(wait_task(c) for c in willing))
                assert [t.round for t in tasks] == [round_number] * 3
                for c in unwilling:
                    task = await c.next_task(wait_seconds=0.2)
                    assert task.kind == "wait"
                assert h.metric("fedfleet_devices_available") == 3
                assert h.metric("fedfleet_devices_checked_in") == 8
                model = await willing[0].download_model(tasks[0].model_version)
                for c, t in zip(willing, tasks, strict=True):
                    await c.upload_update(t, model.weights * 0, 20, 0.5, model.layout)
            assert await h.finished()
            assert [r.invited for r in h.app.records] == [3, 3]
            assert (await unwilling[0].next_task(wait_seconds=0.1)).kind == "done"

    asyncio.run(scenario())


def test_unknown_device_must_check_in_first(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with running(make_job(name="unknown"), tmp_path, pki) as h:
            with pytest.raises(AggregatorError) as err:
                await h.client("dev-new").next_task(wait_seconds=0.1)
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert err.value.reason == "not_checked_in" and "call CheckIn first" in err.value.message

    asyncio.run(scenario())


def test_health_checking_and_reflection(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with running(make_job(name="health"), tmp_path, pki) as h:
            creds = grpc.ssl_channel_credentials(pki.ca_pem)
            async with grpc.aio.secure_channel(h.target, creds) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for service in ("", "fedfleet.v1.Aggregator"):
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
                request = reflection_pb2.ServerReflectionRequest(list_services="")
                responses = [r async for r in reflect.ServerReflectionInfo(iter([request]), timeout=5)]
                names = {s.name for s in responses[0].list_services_response.service}
                assert {"fedfleet.v1.Aggregator", "grpc.health.v1.Health"} <= names
                await h.app.stop()
                with pytest.raises(grpc.aio.AioRpcError):
                    await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)

    asyncio.run(scenario())


@pytest.mark.parametrize("wait", [float("nan"), float("inf"), -1.0])
def test_a_poll_with_an_impossible_wait_is_refused_at_once(tmp_path: Path, pki: Pki, wait: float) -> None:
    async def scenario() -> None:
        async with running(make_job(name="nan-wait"), tmp_path, pki) as h:
            client = h.client("dev-nan")
            await join(client)
            with pytest.raises(ValueError, match="wait_seconds"):
                await client.next_task(wait_seconds=wait)  # the SDK never sends it ...
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as err:  # ... and the server refuses a raw one at once
                await client.stub.GetTask(pb.GetTaskRequest(wait_seconds=wait), metadata=client.metadata, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "wait_seconds" in str(err.value.details())
            assert dict(err.value.trailing_metadata() or ())["fedfleet-error"] == "bad_request"
            assert loop.time() - started < 10.0
            # Other polls are answered as before.
            assert (await client.next_task(wait_seconds=0.1)).kind in ("wait", "train")

    asyncio.run(scenario())

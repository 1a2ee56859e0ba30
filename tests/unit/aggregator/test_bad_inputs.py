"""Each bad upload over real gRPC with TLS: its status code, its message, its metric, and a round whose
result is exactly what it would have been had the bad message never arrived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_harness import Harness, Pki, delta, join, make_job, make_pki, messages, running, wait_task

from bench_hostile_uploads import padded_header_chunk
from busy_machine import MachineSpeed
from fedfleet.device.client import AggregatorError, DeviceClient, Task
from fedfleet.engine.records import read_records
from fedfleet.engine.server import FederatedServer
from fedfleet.engine.types import ModelUpdate
from fedfleet.persist.checkpoint import load_checkpoint
from fedfleet.proto import codec
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.sim.task import build_task

LIMIT = 4000  # the configured maxUpdateBytes: above the model's 2,600 bytes, below a float64 update's 5,200


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@dataclass
class Round:
    harness: Harness
    a: DeviceClient
    b: DeviceClient
    outsider: DeviceClient  # checked in, available, but not in the cohort
    task_a: Task
    task_b: Task
    layout: codec.Layout
    dim: int


Attack = Callable[[Round], Iterator[pb.UpdateChunk]]


def good(r: Round, value: float) -> bytes:
    return bytes(codec.encode_vector(delta(r.dim, value)))


def renamed(layout: codec.Layout) -> codec.Layout:
    (_name, shape), *rest = layout
    return (("weight", shape), *rest)


def transposed(layout: codec.Layout) -> codec.Layout:
    (name, (rows, cols)), *rest = layout
    return ((name, (cols, rows)), *rest)


def with_value(r: Round, index: int, value: float) -> bytes:
    vec = delta(r.dim, 0.2)
    vec[index] = value
    return bytes(codec.encode_vector(vec))


# (case, sender, the stream it sends, expected code, expected reason, words of the expected message)
CASES: list[tuple[str, str, Attack, grpc.StatusCode, str, str]] = [
    (
        "digest mismatch",
        "b",
        lambda r: messages(r.task_b, good(r, 0.2), r.layout, sha256=b"\x00" * 32),
        grpc.StatusCode.DATA_LOSS,
        "corrupt",
        "SHA-256 digest mismatch",
    ),
    (
        "corrupted chunk",
        "b",
        lambda r: messages(
            r.task_b, bytes(good(r, 0.2))[:-4] + b"\xff\xff\xff\x7f", r.layout, sha256=codec.sha256(good(r, 0.2))
        ),
        grpc.StatusCode.DATA_LOSS,
        "corrupt",
        "SHA-256 digest mismatch",
    ),
    (
        "truncated stream",
        "b",
        lambda r: messages(r.task_b, good(r, 0.2), r.layout, send_bytes=1500),
        grpc.StatusCode.DATA_LOSS,
        "corrupt",
        "ended after 1500 of 2600 declared bytes (truncated)",
    ),
    (
        "stream without its digest",
        "b",
        lambda r: messages(r.task_b, good(r, 0.2), r.layout, trailer=False),
        grpc.StatusCode.DATA_LOSS,
        "corrupt",
        "ended without its SHA-256 trailer (truncated)",
    ),
    (
        "wrong tensor names",
        "b",
        lambda r: messages(r.task_b, good(r, 0.2), renamed(r.layout)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "layout",
        "tensor 0 is named 'weight', expected 'out.weight'",
    ),
    (
        "wrong tensor shapes",
        "b",
        lambda r: messages(r.task_b, good(r, 0.2), transposed(r.layout)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape",
        "tensor 'out.weight' has shape [64, 10], expected [10, 64]",
    ),
    (
        "wrong dtype",
        "b",
        lambda r: messages(r.task_b, delta(r.dim, 0.2, "float16").tobytes(), r.layout, dtype="float16"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dtype",
        "update dtype is float16, expected float32",
    ),
    (
        "NaN",
        "b",
        lambda r: messages(r.task_b, with_value(r, 17, float("nan")), r.layout),
        grpc.StatusCode.INVALID_ARGUMENT,
        "non_finite",
        "update contains NaN or Inf",
    ),
    (
        "Inf",
        "b",
        lambda r: messages(r.task_b, with_value(r, 3, float("-inf")), r.layout),
        grpc.StatusCode.INVALID_ARGUMENT,
        "non_finite",
        "update contains NaN or Inf",
    ),
    (
        "larger than the limit",
        "b",
        lambda r: messages(r.task_b, delta(r.dim, 0.2, "float64").tobytes(), r.layout, dtype="float64"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too_large",
        f"update is 5200 bytes, the limit is {LIMIT}",
    ),
    (
        "past round",
        "b",
        lambda r: messages(r.task_b, good(r, 0.2), r.layout, round_number=0),
        grpc.StatusCode.OUT_OF_RANGE,
        "wrong_round",
        "update is for round 0, the current round is 1",
    ),
    (
        "future round",
        "b",
        lambda r: messages(r.task_b, good(r, 0.2), r.layout, round_number=2),
        grpc.StatusCode.OUT_OF_RANGE,
        "wrong_round",
        "update is for round 2, the current round is 1",
    ),
    (
        "replay",
        "a",
        lambda r: messages(r.task_a, good(r, 9.0), r.layout),
        grpc.StatusCode.ALREADY_EXISTS,
        "duplicate",
        "device dev-a already reported in round 1",
    ),
    (
        "not in the cohort",
        "outsider",
        lambda r: messages(r.task_a, good(r, 9.0), r.layout),
        grpc.StatusCode.FAILED_PRECONDITION,
        "not_in_cohort",
        "device dev-out is not in round 1's cohort",
    ),
]


def expected_weights(dim: int) -> np.ndarray:
    """The round with only the two good updates, run by the engine in process."""
    job = make_job()
    server = FederatedServer(job.spec, build_task(job.spec).model.initial_weights())
    r = server.start_round(["dev-a", "dev-b"], now=0.0)
    for device, value in (("dev-a", 0.1), ("dev-b", 0.3)):
        r.submit(ModelUpdate(device, 1, 20, delta(dim, value), 0.5), now=1.0)
    server.finish_round(r)
    return server.weights


async def open_round(h: Harness) -> Round:
    a, b, outsider = h.client("dev-a"), h.client("dev-b"), h.client("dev-out")
    await join(a)
    await join(b)
    await join(outsider, available=False)  # not a candidate: the cohort is exactly a and b
    task_a, task_b = await asyncio.gather(wait_task(a), wait_task(b))
    model = await a.download_model(task_a.model_version)
    return Round(h, a, b, outsider, task_a, task_b, model.layout, int(model.weights.shape[0]))


@pytest.mark.parametrize(
    ("sender", "attack", "code", "reason", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_upload_is_refused_counted_and_leaves_the_round_unchanged(
    tmp_path: Path, pki: Pki, sender: str, attack: Attack, code: grpc.StatusCode, reason: str, words: str
) -> None:
    async def scenario() -> None:
        async with running(make_job(), tmp_path, pki, max_update_bytes=LIMIT) as h:
            r = await open_round(h)
            first = await r.a.upload_update(r.task_a, delta(r.dim, 0.1), 20, 0.5, r.layout)
            assert first.accepted

            client = {"a": r.a, "b": r.b, "outsider": r.outsider}[sender]
            with pytest.raises(AggregatorError) as refused:
                await client.send_upload(attack(r), timeout=10)
            assert refused.value.code == code
            assert refused.value.reason == reason
            assert words in refused.value.message
            assert refused.value.message.startswith(f"update rejected ({reason}): ")
            assert h.metric("fedfleet_updates_rejected_total", reason=reason) == 1
            assert sum(h.metric("fedfleet_updates_rejected_total", reason=x) for x in REASONS) == 1

            # b may still report: the bad message took nothing from the round.
            second = await r.b.upload_update(r.task_b, delta(r.dim, 0.3), 20, 0.5, r.layout)
            assert second.accepted
            assert await h.finished()

        ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
        assert ckpt is not None and ckpt.round == 1
        np.testing.assert_array_equal(ckpt.weights, expected_weights(r.dim))
        (record,) = read_records(tmp_path / "metrics.jsonl")
        assert (record.invited, record.participants, record.rejected, record.dropped) == (2, 2, 0, 0)
        assert ckpt.totals["rejected"] == {reason: 1}
        assert ckpt.totals["outcomes"]["completed"] == 2

    asyncio.run(scenario())


REASONS = ("corrupt", "layout", "shape", "dtype", "non_finite", "too_large", "wrong_round", "duplicate",
           "not_in_cohort", "bad_weight", "round_closed")  # fmt: skip


def test_a_refused_device_that_stays_silent_ends_the_round_rejected(
    tmp_path: Path, pki: Pki, machine_speed: MachineSpeed
) -> None:
    """At the deadline, a cohort member whose only upload was refused is REJECTED (not dropped); with too few
    reports the round fails and the model stays as it was."""

    async def scenario() -> FederatedServer:
        job = make_job(name="reject-outcome")
        # 600 job seconds of deadline at 0.002 wall seconds each: the round closes 1.2 s after it opens on an
        # idle machine (longer on a busy one), time enough for both devices to download and upload first.
        scale = machine_speed.time_scale(0.002)
        async with running(job, tmp_path, pki, max_update_bytes=LIMIT, time_scale=scale) as h:
            r = await open_round(h)
            await r.a.upload_update(r.task_a, delta(r.dim, 0.1), 20, 0.5, r.layout)
            with pytest.raises(AggregatorError) as refused:
                await r.b.send_upload(messages(r.task_b, with_value(r, 0, float("nan")), r.layout), timeout=10)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert await h.finished()
            return h.app.server

    server = asyncio.run(scenario())
    (record,) = read_records(tmp_path / "metrics.jsonl")
    assert not record.succeeded and record.failure is not None and "only 1 of the 2" in record.failure
    assert (record.participants, record.rejected, record.dropped) == (1, 1, 0)
    job = make_job(name="reject-outcome")
    np.testing.assert_array_equal(server.weights, build_task(job.spec).model.initial_weights())
    assert server.totals.rejected == {"non_finite": 1}


GARBAGE = b"\xff\xff\xff\xff\x0f" + bytes(range(256)) * 4  # a varint that overruns, then noise


def test_garbage_bytes_are_refused_counted_and_never_a_traceback(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with running(make_job(), tmp_path, pki) as h:
            r = await open_round(h)
            channel = r.a._channel
            meta = r.a.metadata
            check_in = channel.unary_unary("/fedfleet.v1.Aggregator/CheckIn")  # raw bytes in and out
            for _ in range(200):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await check_in(GARBAGE, metadata=meta, timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid CheckInRequest" in str(refused.value.details())
                assert dict(refused.value.trailing_metadata() or ())["fedfleet-error"] == "malformed_message"
            assert h.metric("fedfleet_malformed_messages_total", method="CheckIn") == 200

            # Garbage inside an upload stream, after a good header: a corrupt upload, counted as one.
            upload = channel.stream_unary("/fedfleet.v1.Aggregator/UploadUpdate")
            header = next(messages(r.task_a, bytes(codec.encode_vector(delta(r.dim, 0.1))), r.layout))

            async def stream() -> AsyncIterator[bytes]:
                yield header.SerializeToString()
                yield GARBAGE

            with pytest.raises(grpc.aio.AioRpcError) as corrupt:
                await upload(stream(), metadata=meta, timeout=10)
            assert corrupt.value.code() == grpc.StatusCode.DATA_LOSS
            assert "not a valid UpdateChunk" in str(corrupt.value.details())
            assert h.metric("fedfleet_updates_rejected_total", reason="corrupt") == 1
            assert h.metric("fedfleet_malformed_messages_total", method="UploadUpdate") == 1

            # Both devices can still report: nothing of the garbage reached the round.
            assert (await r.a.upload_update(r.task_a, delta(r.dim, 0.1), 20, 0.5, r.layout)).accepted
            assert (await r.b.upload_update(r.task_b, delta(r.dim, 0.3), 20, 0.5, r.layout)).accepted
            assert await h.finished()

    with caplog.at_level("DEBUG"):
        asyncio.run(scenario())
    assert not [rec for rec in caplog.records if rec.exc_info], "no traceback is logged"
    warnings = [rec for rec in caplog.records if "malformed message" in rec.getMessage()]
    assert 1 <= len(warnings) <= 2, "one rate-limited line, not one per request"
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ckpt is not None and ckpt.round == 1
    np.testing.assert_array_equal(ckpt.weights, expected_weights(int(ckpt.weights.shape[0])))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_header_padded_with_a_million_tensor_specs_is_refused_unparsed(tmp_path: Path, pki: Pki) -> None:
    # UpdateHeader.layout (field 6) holding 1,000,000 empty TensorSpecs: 2 MB on the wire, ~115 MB of
    # objects once parsed. Built as bytes (as the benchmark does), so the test never holds those objects.
    chunk = padded_header_chunk(1)

    async def scenario() -> None:
        async with running(make_job(), tmp_path, pki) as h:
            r = await open_round(h)
            upload = r.outsider._channel.stream_unary("/fedfleet.v1.Aggregator/UploadUpdate")

            async def stream() -> AsyncIterator[bytes]:
                yield chunk

            before = rss_bytes()
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(4):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await upload(stream(), metadata=r.outsider.metadata, timeout=30)
                assert refused.value.code() == grpc.StatusCode.DATA_LOSS
                assert "this job's layout needs at most" in str(refused.value.details())
            assert loop.time() - started < 20
            assert rss_bytes() - before < 60 << 20, "refused headers must not be parsed into objects"
            # The round goes on as if nothing happened.
            assert (await r.a.upload_update(r.task_a, delta(r.dim, 0.1), 20, 0.5, r.layout)).accepted
            assert (await r.b.upload_update(r.task_b, delta(r.dim, 0.3), 20, 0.5, r.layout)).accepted
            assert await h.finished()

    asyncio.run(scenario())


def test_stalled_uploads_hold_neither_a_place_nor_memory(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with running(make_job(), tmp_path, pki, upload_idle_seconds=3.0) as h:
            r = await open_round(h)
            payload = bytes(codec.encode_vector(delta(r.dim, 0.1)))
            header = next(messages(r.task_a, payload, r.layout))
            stall = asyncio.Event()

            async def stalled() -> AsyncIterator[pb.UpdateChunk]:
                yield header  # declares a whole update, then sends nothing
                await stall.wait()

            first = asyncio.create_task(r.a.send_upload(stalled(), timeout=60))
            while h.app.hub.open_uploads == 0:  # the first stream's header is in: it holds the device's place
                await asyncio.sleep(0.01)
            with pytest.raises(AggregatorError) as busy:  # a second stream while the first is open
                await r.a.send_upload(stalled(), timeout=60)
            assert busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and busy.value.reason == "busy"
            with pytest.raises(AggregatorError) as dropped:  # the idle timeout ends the first
                await first
            assert dropped.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and dropped.value.reason == "stalled"
            stall.set()
            assert h.metric("fedfleet_updates_rejected_total", reason="stalled") == 1
            assert h.metric("fedfleet_updates_rejected_total", reason="busy") == 1
            # Neither left a trace: the device uploads its update as usual.
            assert (await r.a.upload_update(r.task_a, delta(r.dim, 0.1), 20, 0.5, r.layout)).accepted
            assert (await r.b.upload_update(r.task_b, delta(r.dim, 0.3), 20, 0.5, r.layout)).accepted
            assert await h.finished()
        ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
        assert ckpt is not None
        np.testing.assert_array_equal(ckpt.weights, expected_weights(int(ckpt.weights.shape[0])))

    asyncio.run(scenario())


def test_random_bytes_to_every_method_get_a_precise_status(tmp_path: Path, pki: Pki) -> None:
    rng = np.random.default_rng(7)
    methods = [m for m in pb.DESCRIPTOR.services_by_name["Aggregator"].methods]
    precise = {
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
    }  # fmt: skip

    async def scenario() -> None:
        async with running(make_job(), tmp_path, pki) as h:
            r = await open_round(h)
            channel, meta = r.outsider._channel, r.outsider.metadata
            seen: dict[str, set[grpc.StatusCode]] = {}
            for method in methods:
                path = f"/fedfleet.v1.Aggregator/{method.name}"
                for _ in range(40):
                    size = int(rng.integers(1, 300))
                    data = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
                    try:
                        if method.client_streaming:
                            await channel.stream_unary(path)(iter([data]), metadata=meta, timeout=10)
                        elif method.server_streaming:
                            async for _ in channel.unary_stream(path)(data, metadata=meta, timeout=10):
                                pass
                        else:
                            await channel.unary_unary(path)(data, metadata=meta, timeout=10)
                    except grpc.aio.AioRpcError as err:
                        seen.setdefault(method.name, set()).add(err.code())
            for name, codes in seen.items():
                assert codes <= precise, f"{name}: {codes - precise}"
            # The round is untouched by all of it.
            assert (await r.a.upload_update(r.task_a, delta(r.dim, 0.1), 20, 0.5, r.layout)).accepted
            assert (await r.b.upload_update(r.task_b, delta(r.dim, 0.3), 20, 0.5, r.layout)).accepted
            assert await h.finished()

    asyncio.run(scenario())

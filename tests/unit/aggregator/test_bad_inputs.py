"""Each bad upload over real gRPC with TLS: its status code, its message, its metric, and a round whose
result is exactly what it would have been had the bad message never arrived."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_harness import Harness, Pki, delta, join, make_job, make_pki, messages, running, wait_task

from busy_machine import MachineSpeed
from fedfleet.device.client import AggregatorError, DeviceClient, Task
from fedfleet.engine.server import FederatedServer
from fedfleet.engine.types import ModelUpdate
from fedfleet.persist.checkpoint import load_checkpoint
from fedfleet.proto import codec
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.runtime.records import read_records
from fedfleet.runtime.task import build_task

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
    server = FederatedServer(job.spec, build_task(job.spec).initial_weights())
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
            return h.app.coordinator.server

    server = asyncio.run(scenario())
    (record,) = read_records(tmp_path / "metrics.jsonl")
    assert not record.succeeded and record.failure is not None and "only 1 of the 2" in record.failure
    assert (record.participants, record.rejected, record.dropped) == (1, 1, 0)
    job = make_job(name="reject-outcome")
    np.testing.assert_array_equal(server.weights, build_task(job.spec).initial_weights())
    assert server.totals.rejected == {"non_finite": 1}

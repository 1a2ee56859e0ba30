"""Secure aggregation over real gRPC with TLS: the four stages as RPCs, devices dropping at every stage, a
device sending malformed keys, a round below the threshold, and plaintext uploads refused.

The devices here are driven stage by stage with the SDK's client and SecAggClient, so each test knows every
quantized input and can check the aggregator's model step against the exact sum of the survivors' inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_harness import Harness, Pki, make_job, make_pki, messages, running, wait_task

from fedfleet.api.federatedjob import FederatedJob
from fedfleet.device.client import AggregatorError, Capabilities, DeviceClient, Task
from fedfleet.device.secure import SecureRoundRefusedByDevice, SentRounds
from fedfleet.engine.records import read_records
from fedfleet.privacy.secagg import PublicKeys, SecAggClient, Stage, ring
from fedfleet.privacy.secure_update import UpdateEncoding
from fedfleet.proto import codec
from fedfleet.proto import secagg_wire as wire
from fedfleet.proto.v1 import aggregator_pb2 as pb


def secure_job(name: str, *, rounds: int = 1, clients: int = 16, min_reports: int = 4) -> FederatedJob:
    return make_job(
        name,
        rounds,
        clients,
        cohort={"minReports": min_reports, "roundDeadlineSeconds": 4},
        simulation={"devices": clients},
        privacy={
            "secureAggregation": {"enabled": True, "neighbours": 100, "thresholdFraction": 0.51, "quantizationBits": 16}
        },
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@dataclass
class Device:
    """A scripted device: which stage it goes silent at (None: never), and whether it sends garbage keys."""

    name: str
    examples: int
    silent_from: Stage | None = None
    malformed_keys: bool = False
    bad_masked_input: str | None = None  # "corrupt": a digest mismatch first; "short": a wrong-size input
    first_refusal: AggregatorError | None = None  # what the bad masked input got
    vector: np.ndarray | None = None  # its quantized input, once it sent a masked input
    encoding: UpdateEncoding | None = None  # the round's encoding, as its TRAIN task gave it
    refusal: AggregatorError | None = None


async def take_part(harness: Harness, device: Device, delta: np.ndarray, seed: int) -> None:
    client = harness.client(device.name)
    await client.check_in(consent=True, capabilities=Capabilities(train_examples=device.examples))
    task = await wait_task(client)
    assert task.secure is not None, "a secure job's TRAIN task carries the secure-aggregation parameters"
    config, encoding = wire.task_from_proto(task.round, task.secure)
    device.encoding = encoding
    secagg = SecAggClient(config, task.secure.client_id)
    try:
        await stages(client, task, device, secagg, encoding, delta, seed)
    except AggregatorError as err:
        device.refusal = err


async def stages(
    client: DeviceClient,
    task: Task,
    device: Device,
    secagg: SecAggClient,
    encoding: UpdateEncoding,
    delta: np.ndarray,
    seed: int,
) -> None:
    silent = device.silent_from
    if silent == Stage.ADVERTISE_KEYS:
        return
    keys = secagg.advertise_keys()
    if device.malformed_keys:
        keys = PublicKeys(keys.round_id, keys.encryption_key[:31], keys.masking_key)
    broadcast = await client.advertise_keys(wire.public_keys_to_proto(keys), task.deadline)
    if silent == Stage.SHARE_KEYS:
        return
    shares = secagg.share_keys(wire.broadcast_from_proto(broadcast))
    bundle = await client.share_keys(wire.share_keys_to_proto(shares), task.deadline)
    if silent == Stage.MASKED_INPUT:
        return
    vector = encoding.encode(delta, device.examples, np.random.default_rng(seed))
    masked = secagg.masked_input(wire.bundle_from_proto(bundle), vector)
    if device.bad_masked_input is not None:
        device.first_refusal = await send_bad_masked_input(client, task, masked.masked, device.bad_masked_input)
        if device.bad_masked_input == "short":
            return
    device.vector = vector
    request = await client.upload_masked_input(task.round, masked.masked, masked.complaints, task.deadline + 5)
    if silent == Stage.UNMASK:
        return
    response = secagg.unmask(wire.unmask_request_from_proto(request))
    await client.unmask(wire.unmask_response_to_proto(response), task.deadline + 5)


async def send_bad_masked_input(client: DeviceClient, task: Task, masked: bytes, kind: str) -> AggregatorError:
    """A masked input whose SHA-256 does not match ("corrupt") or that is 4 bytes short ("short")."""
    payload = masked[:-4] if kind == "short" else masked
    digest = hashlib.sha256(payload).digest() if kind == "short" else bytes(32)
    stream = [
        pb.MaskedInputChunk(header=pb.MaskedInputHeader(round=task.round, total_bytes=len(payload))),
        pb.MaskedInputChunk(data=payload),
        pb.MaskedInputChunk(trailer=pb.UpdateTrailer(sha256=digest)),
    ]
    try:
        await client.stub.UploadMaskedInput(iter(stream), metadata=client.metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        return AggregatorError.from_rpc(err)
    raise AssertionError(f"a {kind} masked input was accepted")


def deltas(count: int, dim: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.uniform(-0.4, 0.4, dim).astype(np.float32) for _ in range(count)]


def expected_weights(initial: np.ndarray, encoding: UpdateEncoding, vectors: list[np.ndarray]) -> np.ndarray:
    """The FedAvg step (server lr 1) with the exact modular sum of the included quantized inputs."""
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v
    ring.reduce(total, encoding.modulus_bits)
    decoded = encoding.decode_sum(total, len(vectors))
    aggregate = (decoded.total / decoded.weight).astype(np.float32)
    return (initial.astype(np.float64) + aggregate.astype(np.float64)).astype(np.float32)


def test_dropouts_at_every_stage_and_malformed_keys_leave_the_exact_sum_of_the_survivors(
    tmp_path: Path, pki: Pki
) -> None:
    job = secure_job("secagg-dropouts")
    devices = [Device(f"d{i:02d}", examples=10 + 3 * i) for i in range(16)]
    devices[0].silent_from = Stage.ADVERTISE_KEYS
    devices[1].silent_from = Stage.SHARE_KEYS
    devices[2].silent_from = devices[3].silent_from = Stage.MASKED_INPUT
    devices[4].silent_from = Stage.UNMASK  # its input is in the sum; its neighbours reveal its self mask
    devices[5].malformed_keys = True

    async def scenario() -> tuple[np.ndarray, np.ndarray, Harness]:
        async with running(job, tmp_path / "state", pki) as harness:
            initial = harness.app.server.weights.copy()
            updates = deltas(len(devices), initial.shape[0])
            await asyncio.gather(*(take_part(harness, d, updates[i], seed=i) for i, d in enumerate(devices)))
            assert await harness.finished()
            return initial, harness.app.server.weights.copy(), harness

    initial, final, harness = asyncio.run(scenario())

    malformed = devices[5].refusal
    assert malformed is not None and malformed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.reason == "secagg_malformed" and "encryption_key" in malformed.message
    assert devices[1].refusal is None and devices[0].refusal is None
    included = [d for d in devices if d.vector is not None]
    assert [d.name for d in included] == ["d04"] + [f"d{i:02d}" for i in range(6, 16)]
    encoding = included[-1].encoding
    assert encoding is not None and encoding.weighted
    np.testing.assert_array_equal(final, expected_weights(initial, encoding, [d.vector for d in included]))

    (record,) = read_records(harness.app.paths.metrics)
    assert record.participants == 11 and record.rejected == 1 and record.dropped == 4
    assert harness.metric("fedfleet_updates_rejected_total", reason="secagg_malformed") == 1
    assert harness.metric("fedfleet_secagg_excluded_total", stage="advertise_keys", reason="malformed") == 1
    assert harness.metric("fedfleet_secagg_excluded_total", stage="advertise_keys", reason="silent") == 1
    assert harness.metric("fedfleet_secagg_excluded_total", stage="share_keys", reason="silent") == 1
    assert harness.metric("fedfleet_secagg_rounds_total", result="succeeded") == 1
    assert harness.metric("fedfleet_rpc_duration_seconds_count", method="UploadUpdate") == 0


def test_a_round_below_the_threshold_fails_cleanly_and_the_next_round_runs(tmp_path: Path, pki: Pki) -> None:
    job = secure_job("secagg-threshold", rounds=2, clients=5, min_reports=4)
    names = [f"t{i}" for i in range(5)]

    async def one_round(harness: Harness, silent: set[str], updates: list[np.ndarray]) -> list[Device]:
        devices = [Device(n, examples=20, silent_from=Stage.MASKED_INPUT if n in silent else None) for n in names]
        await asyncio.gather(*(take_part(harness, d, updates[i], seed=i) for i, d in enumerate(devices)))
        return devices

    async def scenario() -> tuple[np.ndarray, np.ndarray, list[Device], list[Device], Harness]:
        async with running(job, tmp_path / "state", pki) as harness:
            initial = harness.app.server.weights.copy()
            updates = deltas(5, initial.shape[0])
            first = await one_round(harness, {"t0", "t1"}, updates)  # 3 survivors < minReports 4
            second = await one_round(harness, set(), updates)
            assert await harness.finished()
            return initial, harness.app.server.weights.copy(), first, second, harness

    initial, final, first, second, harness = asyncio.run(scenario())
    survivors = [d for d in first if d.silent_from is None]
    for d in survivors:
        assert d.refusal is not None and d.refusal.reason == "secagg_aborted", d.refusal
    failed, succeeded = read_records(harness.app.paths.metrics)
    assert failed.failure is not None and "secure aggregation aborted" in failed.failure
    assert failed.participants == 0
    assert succeeded.failure is None and succeeded.participants == 5
    encoding = second[0].encoding
    assert encoding is not None
    np.testing.assert_array_equal(final, expected_weights(initial, encoding, [d.vector for d in second]))
    assert harness.metric("fedfleet_secagg_rounds_total", result="failed") == 1
    assert harness.metric("fedfleet_secagg_rounds_total", result="succeeded") == 1


def test_a_corrupted_masked_input_can_be_resent_and_a_wrong_sized_one_drops_its_sender(
    tmp_path: Path, pki: Pki
) -> None:
    job = secure_job("secagg-bad-masked", clients=5, min_reports=2)
    devices = [Device(f"m{i}", examples=15) for i in range(5)]
    devices[0].bad_masked_input = "corrupt"
    devices[1].bad_masked_input = "short"

    async def scenario() -> tuple[np.ndarray, np.ndarray, Harness]:
        async with running(job, tmp_path / "state", pki) as harness:
            initial = harness.app.server.weights.copy()
            updates = deltas(len(devices), initial.shape[0])
            await asyncio.gather(*(take_part(harness, d, updates[i], seed=i) for i, d in enumerate(devices)))
            assert await harness.finished()
            return initial, harness.app.server.weights.copy(), harness

    initial, final, harness = asyncio.run(scenario())
    corrupt, short = devices[0].first_refusal, devices[1].first_refusal
    assert corrupt is not None and corrupt.code == grpc.StatusCode.DATA_LOSS and corrupt.reason == "corrupt"
    assert "digest mismatch" in corrupt.message
    assert short is not None and short.code == grpc.StatusCode.INVALID_ARGUMENT
    assert short.reason == "secagg_malformed" and "the header declares" in short.message
    # The corrupted stream left no trace: the same device's intact resend is in the sum; the short one is not.
    included = [d for d in devices if d.vector is not None]
    assert [d.name for d in included] == ["m0", "m2", "m3", "m4"]
    encoding = included[0].encoding
    assert encoding is not None
    np.testing.assert_array_equal(final, expected_weights(initial, encoding, [d.vector for d in included]))
    (record,) = read_records(harness.app.paths.metrics)
    assert record.participants == 4 and record.rejected == 1
    assert harness.metric("fedfleet_secagg_excluded_total", stage="masked_input", reason="malformed") == 1
    assert harness.metric("fedfleet_updates_rejected_total", reason="corrupt") == 1
    assert harness.metric("fedfleet_updates_rejected_total", reason="secagg_malformed") == 1


def refused_plaintext_uploads(state: Path, pki: Pki, attempts: int, chunk_bytes: int) -> list[AggregatorError]:
    """A device of a secure job sends plaintext updates `attempts` times; what each attempt was refused with."""
    job = secure_job("secagg-plaintext", clients=2, min_reports=2)

    async def scenario() -> list[AggregatorError]:
        async with running(job, state, pki) as harness:
            client = harness.client("p0")
            other = harness.client("p1")
            for c in (client, other):
                await c.check_in(consent=True, capabilities=Capabilities(train_examples=5))
            task = await wait_task(client)
            model = await client.download_model(task.model_version)
            payload = bytes(codec.encode_vector(np.zeros(model.weights.shape[0], np.float32)))
            errors = []
            for _ in range(attempts):
                with pytest.raises(AggregatorError) as caught:
                    await client.send_upload(messages(task, payload, model.layout, chunk_bytes=chunk_bytes))
                errors.append(caught.value)
            return errors

    return asyncio.run(scenario())


def test_a_plaintext_upload_is_refused_in_a_secure_job(tmp_path: Path, pki: Pki) -> None:
    [err] = refused_plaintext_uploads(tmp_path / "state", pki, attempts=1, chunk_bytes=1024)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "secure_only"
    assert "UploadMaskedInput" in err.message


def test_a_device_never_sends_two_masked_inputs_for_one_round_under_different_sessions() -> None:
    sent = SentRounds()
    sent.record(3, b"a" * 32)
    sent.check(3, b"a" * 32)  # the same session again (a retry) is fine
    sent.check(4, b"b" * 32)
    with pytest.raises(SecureRoundRefusedByDevice, match="round 3 was already aggregated"):
        sent.check(3, b"b" * 32)


def test_every_refused_plaintext_upload_hears_its_reason(tmp_path: Path, pki: Pki) -> None:
    """The server refuses from the header while the device is still sending chunks: the device must hear the
    refusal and its reason every time, never a transport error in its place (grpc/grpc#36066)."""
    errors = refused_plaintext_uploads(tmp_path / "state", pki, attempts=12, chunk_bytes=256)
    assert [(e.code, e.reason) for e in errors] == [(grpc.StatusCode.FAILED_PRECONDITION, "secure_only")] * 12

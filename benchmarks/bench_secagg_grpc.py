"""A secure-aggregation round over the aggregator's gRPC protocol, against a plaintext round in the same run.

    nice -n 10 .venv/bin/python benchmarks/bench_secagg_grpc.py                 # n ∈ {100, 500} × m ∈ {1e5, 1e6}
    nice -n 10 .venv/bin/python benchmarks/bench_secagg_grpc.py --clients 100 --length 100000      # cheapest

The aggregator (device hub, round loop + gRPC service with TLS, as `fedfleet aggregator` runs them) is its own process;
the n devices are SDK clients (DeviceClient + SecureSession: keys, encoding, masking, unmasking) in this
process, each with its own TLS connection and token. 10% of the devices go silent after the key exchange
(they drop while "training"), the costliest dropout for the server, which must rebuild their masking keys
and regenerate their pairwise masks. The cohort over-selects so the other 90% fill the round.
Updates are synthetic (normal, σ = 0.05), there is no training: the figures are the protocol's.

Per configuration it reports:
- server: CPU seconds of the aggregator process from the round's start to its result, and the round's wall
  time (for the secure round also the unmasking + finalize stage);
- per device: seconds of its own protocol work (encode, keys, shares, mask, unmask; mean and p95) and the
  bytes it sent and received (serialized messages);
- the same server figures for a plaintext round of the same n, m and dropouts, and their ratios;
- a correctness check: the aggregator's new model equals the mean of the surviving updates within the
  quantization step.
Mask expansion throughput (AES-256-CTR, GB/s of uint64 mask) is measured once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: bench-secagg
spec:
  rounds: 1
  seed: 1
  model: {{architecture: logistic}}
  cohort: {{clientsPerRound: {target}, overSelection: {over}, minReports: {target}, roundDeadlineSeconds: 1800}}
  evaluation: {{serverEvery: 0}}
  simulation: {{devices: {clients}}}
  privacy:
    secureAggregation: {{enabled: {secure}, quantizationBits: 20}}
"""
DROPOUT = 0.1
EXAMPLES = 100


def job_yaml(clients: int, secure: bool) -> str:
    target = clients - math.ceil(DROPOUT * clients)
    return JOB.format(clients=clients, target=target, over=repr(clients / target), secure=str(secure).lower())


# ---- the aggregator process -----------------------------------------------------------------------------


def serve(yaml_text: str, length: int, ca: bytes, cert: bytes, key: bytes, token_key: bytes, conn: Connection) -> None:
    asyncio.run(_serve(yaml_text, length, ca, cert, key, token_key, conn))


async def _serve(
    yaml_text: str, length: int, ca: bytes, cert: bytes, key: bytes, token_key: bytes, conn: Connection
) -> None:
    from grpc_health.v1 import health
    from prometheus_client import CollectorRegistry

    from fedfleet.aggregator.app import Security, create_grpc_server, job_identity
    from fedfleet.aggregator.guarded_handlers import message_limits
    from fedfleet.aggregator.hub import DeviceHub, HubSettings
    from fedfleet.aggregator.metrics import AggregatorMetrics
    from fedfleet.aggregator.service import AggregatorService
    from fedfleet.aggregator.transport import serve_rounds
    from fedfleet.api.manifest import parse_job
    from fedfleet.engine.journal import RunJournal
    from fedfleet.engine.loop import record_observer
    from fedfleet.engine.records import RoundRecord
    from fedfleet.engine.server import FederatedServer
    from fedfleet.security.tokens import TokenVerifier

    job = parse_job(yaml_text)
    identity = job_identity(job)
    registry = CollectorRegistry()
    metrics = AggregatorMetrics(registry, process=False)
    with tempfile.TemporaryDirectory() as state:
        hub = DeviceHub(
            identity,
            job.spec,
            FederatedServer(job.spec, np.zeros(length, np.float32)),
            (("w", (length,)),),
            metrics,
            HubSettings(settle_seconds=1.0, quiet_seconds=0.5, poll_seconds=10.0, device_ttl_seconds=3600),
        )
        journal = RunJournal(Path(state))
        journal.prepare(resume=False)
        service = AggregatorService(hub, TokenVerifier(token_key, identity), 1 << 20)
        limits = message_limits(hub.layout, job.spec.cohort.invited)
        server, port = create_grpc_server(
            service, health.aio.HealthServicer(), Security(cert, key, ca, token_key), "127.0.0.1", 0, limits
        )
        await server.start()
        conn.send(port)
        marks: dict[str, float] = {}

        async def watch() -> None:  # the CPU clock at the round's start (when the cohort is invited)
            while hub.current is None:
                await asyncio.sleep(0.005)
            marks["cpu"], marks["wall"] = time.process_time(), time.perf_counter()

        watcher = asyncio.create_task(watch())
        records: list[RoundRecord] = []
        await serve_rounds(hub, journal, observers=[record_observer(records.append)])
        cpu, wall = time.process_time() - marks["cpu"], time.perf_counter() - marks["wall"]
        await watcher
        unmask = registry.get_sample_value("fedfleet_secagg_stage_seconds_sum", {"stage": "unmask"})
        (record,) = records
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not hub.all_told_done():
            await asyncio.sleep(0.05)
        conn.send(
            {
                "server_cpu_seconds": cpu,
                "round_wall_seconds": wall,
                "unmask_finalize_seconds": unmask,
                "participants": record.participants,
                "succeeded": record.succeeded,
                "weights": hub.server.weights,
            }
        )
        await server.stop(1)


# ---- the devices ----------------------------------------------------------------------------------------


@dataclass
class DeviceCost:
    seconds: float = 0.0
    sent: int = 0
    received: int = 0
    submitted: bool = False


def update_of(device: int, length: int) -> np.ndarray:
    return np.random.default_rng(device).normal(0.0, 0.05, length).astype(np.float32)


async def run_devices(
    port: int, clients: int, length: int, ca: bytes, token_key: bytes, secure: bool
) -> list[DeviceCost]:
    from fedfleet.api.manifest import parse_job
    from fedfleet.device.client import Capabilities, DeviceClient
    from fedfleet.device.secure import SecureSession
    from fedfleet.security.tokens import issue_token, job_identity

    identity = job_identity("bench-secagg")
    silent = set(range(0, clients, round(1 / DROPOUT)))  # every tenth device drops after the key exchange
    assert len(silent) == math.ceil(DROPOUT * clients)
    assert parse_job(job_yaml(clients, secure)).spec.cohort.invited == clients, "the whole fleet is invited"
    heavy = asyncio.Semaphore(4)  # bounds how many updates are encoded at once (memory, not speed)
    layout = (("w", (length,)),)

    async def device(i: int) -> DeviceCost:
        cost = DeviceCost()
        async with DeviceClient(
            f"127.0.0.1:{port}",
            device_id=f"dev-{i:05d}",
            token=issue_token(token_key, identity, f"dev-{i:05d}", 3600),
            root_certificates=ca,
            give_up_after=600,
        ) as client:
            await client.check_in(consent=True, capabilities=Capabilities(train_examples=EXAMPLES))
            task = await client.next_task(wait_seconds=10)
            while task.kind == "wait":
                task = await client.next_task(wait_seconds=10)
            assert task.kind == "train", task
            if secure:
                session = SecureSession(client, task)
                await session.exchange_keys()
                if i not in silent:
                    async with heavy:
                        masked = await session.mask(update_of(i, length), EXAMPLES)
                    await session.send(masked)
                    cost.submitted = True
                cost.seconds, cost.sent = session.crypto_seconds, session.upload_bytes
                cost.received = session.download_bytes
            elif i not in silent:
                update = update_of(i, length)
                await client.upload_update(task, update, EXAMPLES, float("nan"), layout)
                cost.submitted, cost.sent = True, update.nbytes
            while task.kind != "done":  # until the aggregator says the job is over
                task = await client.next_task(wait_seconds=10)
        return cost

    return await asyncio.gather(*(device(i) for i in range(clients)))


# ---- one configuration ----------------------------------------------------------------------------------


def one_round(clients: int, length: int, secure: bool) -> tuple[dict[str, Any], list[DeviceCost]]:
    from fedfleet.security.certs import generate_ca, issue_server_cert
    from fedfleet.security.tokens import new_key

    authority = generate_ca("bench CA")
    server_cert = issue_server_cert(authority, ["127.0.0.1", "localhost"])
    token_key = new_key()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    args = (job_yaml(clients, secure), length, authority.cert_pem, server_cert.cert_pem, server_cert.key_pem, token_key)
    aggregator = ctx.Process(target=serve, args=(*args, child))
    aggregator.start()
    try:
        port = parent.recv()
        costs = asyncio.run(run_devices(port, clients, length, authority.cert_pem, token_key, secure))
        result: dict[str, Any] = parent.recv()
    finally:
        aggregator.join(120)  # it lingers until every device heard the job is over, then stops its server
        if aggregator.is_alive():
            aggregator.kill()
    return result, costs


@dataclass
class Row:
    clients: int
    length: int
    secure_server_cpu_s: float
    secure_round_wall_s: float
    unmask_finalize_s: float
    device_mean_s: float
    device_p95_s: float
    device_sent_bytes: int
    device_received_bytes: int
    plain_server_cpu_s: float
    plain_round_wall_s: float
    plain_device_sent_bytes: int
    cpu_ratio: float
    wall_ratio: float
    participants: int
    max_error: float
    error_bound: float


def measure(clients: int, length: int) -> Row:
    secure, costs = one_round(clients, length, secure=True)
    plain, plain_costs = one_round(clients, length, secure=False)
    if not (secure["succeeded"] and plain["succeeded"]):
        raise SystemExit(f"a round failed: secure {secure['succeeded']}, plaintext {plain['succeeded']}")
    submitted = [i for i, c in enumerate(costs) if c.submitted]
    mean = np.zeros(length, np.float64)
    for i in submitted:
        mean += update_of(i, length)
    mean /= len(submitted)
    error = float(np.max(np.abs(secure["weights"].astype(np.float64) - mean)))
    step = 2.0 / ((1 << 20) - 1)  # clipRange 1, 20 bits: the quantizer's step; the mean's error is below it
    work = sorted(c.seconds for c in costs if c.submitted)
    sent = [c.sent for c in costs if c.submitted]
    received = [c.received for c in costs if c.submitted]
    return Row(
        clients=clients,
        length=length,
        secure_server_cpu_s=round(secure["server_cpu_seconds"], 3),
        secure_round_wall_s=round(secure["round_wall_seconds"], 3),
        unmask_finalize_s=round(secure["unmask_finalize_seconds"] or 0.0, 3),
        device_mean_s=round(float(np.mean(work)), 4),
        device_p95_s=round(float(np.percentile(work, 95)), 4),
        device_sent_bytes=int(np.mean(sent)),
        device_received_bytes=int(np.mean(received)),
        plain_server_cpu_s=round(plain["server_cpu_seconds"], 3),
        plain_round_wall_s=round(plain["round_wall_seconds"], 3),
        plain_device_sent_bytes=int(np.mean([c.sent for c in plain_costs if c.submitted])),
        cpu_ratio=round(secure["server_cpu_seconds"] / plain["server_cpu_seconds"], 2),
        wall_ratio=round(secure["round_wall_seconds"] / plain["round_wall_seconds"], 2),
        participants=secure["participants"],
        max_error=error,
        error_bound=step,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--length", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    from bench_secagg import benchmark_expand_mask

    expansion = benchmark_expand_mask()
    print(f"mask expansion: {expansion:.2f} GB/s of uint64 mask (AES-256-CTR)")
    rows = []
    ok = True
    for clients in args.clients:
        for length in args.length:
            row = measure(clients, length)
            rows.append(row)
            ok &= row.max_error <= row.error_bound
            print(json.dumps(asdict(row)), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"mask_expansion_gbps": expansion, "rows": [asdict(r) for r in rows]}))
    print(
        f"{'n':>4} {'m':>8} | {'server cpu':>10} {'round':>7} {'unmask':>7} | {'device':>8} {'p95':>7} "
        f"{'sent':>10} {'recv':>9} | {'plain cpu':>9} {'round':>7} | {'cpu x':>6} {'wall x':>6}"
    )
    for r in rows:
        print(
            f"{r.clients:>4} {r.length:>8} | {r.secure_server_cpu_s:>9.2f}s {r.secure_round_wall_s:>6.2f}s "
            f"{r.unmask_finalize_s:>6.2f}s | {r.device_mean_s * 1000:>6.0f}ms {r.device_p95_s * 1000:>5.0f}ms "
            f"{r.device_sent_bytes:>10,} {r.device_received_bytes:>9,} | {r.plain_server_cpu_s:>8.2f}s "
            f"{r.plain_round_wall_s:>6.2f}s | {r.cpu_ratio:>6.2f} {r.wall_ratio:>6.2f}"
        )
    if not ok:
        print("FAIL: an aggregate differs from the mean of the surviving updates by more than one quantization step")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

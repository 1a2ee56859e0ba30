"""One fleet gateway process holding the WatchAssignment streams of 10,000 devices, on this machine.

    python benchmarks/bench_gateway_fleet.py [--devices 10000] [--clients 4] [--canary-weight 50]
        [--checkin-seconds 10] [--checkin-concurrency 32] [--out benchmarks/results/gateway_fleet.json]

The gateway is `fedfleet gateway` in its own process (TLS, generated keys), as in its pod. The devices live in
`--clients` separate processes so that the client side does not bound the figures; each device has its own
token and, by default, its own TLS connection, and holds one WatchAssignment stream (raw gRPC stubs: the
stream is what is measured, not the device SDK). The operator's side publishes a stable and a candidate
model and a view that puts `--canary-weight` percent of the fleet on the candidate. Then:

1. RSS: the gateway's resident memory at rest and with every stream open (and its peak).
2. Abort propagation: the operator puts the same rollout at weight 0 (an abort). Each device records when its
   stream delivered its changed assignment; the time from the PutFleetView call to that moment, p50 / p99
   over the devices whose assignment changed. Bar: p99 < 2 s, every canary device moved back and no other
   device heard anything.
3. Check-in throughput: the devices call CheckIn concurrently (`--checkin-concurrency` calls in flight per
   client process) over a fixed window, with every stream still open; completed calls per second. Bar:
   ≥ 2,000/s.

Prints the figures, writes them as JSON (default benchmarks/results/gateway_fleet.json) and exits 1 when a
bar is missed. It only talks to 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from fedfleet.models.artifact import digest_of
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.proto.v1 import gateway_pb2_grpc as rpc
from fedfleet.rollout.assignment import FleetView, Role, RolloutView, assign
from fedfleet.rollout.selector import DeviceSelector
from fedfleet.security.signing import SigningKey
from gateway_process import (
    FLEET,
    Admin,
    ClientProcess,
    GatewayProcess,
    device_channel_options,
    device_metadata,
    mb,
    model_artifact,
    percentile_ms,
    raise_open_file_limit,
    receive_command,
    signed_release,
    start_clients,
    start_gateway,
    write_result,
)

PROPAGATION_BAR_P99_SECONDS = 2.0
CHECKIN_BAR_PER_SECOND = 2000.0
ATTRIBUTES = {"deviceClass": "phone", "os": "android", "region": "eu"}
APP_VERSION = "3.1"
MODEL_BYTES = 64 << 10
#: Streams a client process has in opening at once: a burst of TLS handshakes is queued by the clients,
#: so what is measured is the gateway holding streams, not the kernel's accept backlog.
OPENING_AT_ONCE = 200
#: Per call; a check-in that takes longer is counted as an error.
CALL_SECONDS = 30.0


def device_ids(count: int) -> list[str]:
    return [f"device-{i:05d}" for i in range(count)]


def fleet_view(stable: str, candidate: str, weight: float, generation: int) -> FleetView:
    rollout = RolloutView("bench", "bench-salt", 1, stable, candidate, weight, DeviceSelector.from_dict({}), False)
    return FleetView(FLEET, stable, (rollout,), generation)


# ---- a client process: a share of the fleet's devices -------------------------------------------------------


class Devices:
    """The devices of one client process: their channels, tokens and open streams, and what each heard."""

    def __init__(self, target: str, ca_pem: bytes, token_key: bytes, ids: list[str], per_connection: int) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        count = -(-len(ids) // per_connection)
        self.channels = [grpc.aio.secure_channel(target, credentials, device_channel_options()) for _ in range(count)]
        self.stubs = [rpc.FleetStub(c) for c in self.channels]
        self.ids = ids
        self.per_connection = per_connection
        self.metadata = [device_metadata(token_key, d) for d in ids]
        self.first: list[str | None] = [None] * len(ids)
        self.changed_at: list[float | None] = [None] * len(ids)
        self.errors: Counter[str] = Counter()
        self.keepalives = 0
        self._calls: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._opening = asyncio.Semaphore(OPENING_AT_ONCE)
        self._stopping = False

    def stub(self, index: int) -> Any:
        return self.stubs[index // self.per_connection]

    async def open_all(self) -> dict[str, Any]:
        started = time.monotonic()
        openings = [asyncio.get_running_loop().create_future() for _ in self.ids]
        self._tasks = [asyncio.create_task(self._hold(i, openings[i])) for i in range(len(self.ids))]
        await asyncio.gather(*openings)
        return {
            "opened": sum(v is not None for v in self.first),
            "first_versions": dict(Counter(v for v in self.first if v is not None)),
            "errors": dict(self.errors),
            "seconds": time.monotonic() - started,
        }

    async def _hold(self, i: int, opened: asyncio.Future[None]) -> None:
        """Device i's stream: the first assignment, then the moment its assignment changed."""
        try:
            async with self._opening:
                call = self.stub(i).WatchAssignment(
                    pb.WatchAssignmentRequest(attributes=ATTRIBUTES), metadata=self.metadata[i], wait_for_ready=True
                )
                self._calls.append(call)
                event = await call.read()
            if event is grpc.aio.EOF:
                self.errors["EOF before the first assignment"] += 1
                return
            self.first[i] = event.assignment.version
            opened.set_result(None)
            while True:
                event = await call.read()
                now = time.monotonic()
                if event is grpc.aio.EOF:
                    if not self._stopping:
                        self.errors["stream ended"] += 1
                    return
                if event.WhichOneof("event") == "keepalive":
                    self.keepalives += 1
                elif event.assignment.version != self.first[i] and self.changed_at[i] is None:
                    self.changed_at[i] = now
        except grpc.aio.AioRpcError as err:
            if not self._stopping:
                self.errors[err.code().name] += 1
        except asyncio.CancelledError:
            pass
        finally:
            if not opened.done():
                opened.set_result(None)

    async def changes(self, candidate: str, until: float) -> dict[str, Any]:
        """When each device that ran the candidate heard it must go back (waiting until every one did, or
        `until`), and how many other devices heard of a change they should not have."""
        expected = [i for i, v in enumerate(self.first) if v == candidate]
        while time.monotonic() < until and any(self.changed_at[i] is None for i in expected):
            await asyncio.sleep(0.05)
        moved = [t for i in expected if (t := self.changed_at[i]) is not None]
        unexpected = sum(1 for i, t in enumerate(self.changed_at) if t is not None and self.first[i] != candidate)
        return {"expected": len(expected), "changed_at": moved, "unexpected": unexpected, "errors": dict(self.errors)}

    async def check_in(self, start_at: float, end_at: float, concurrency: int) -> dict[str, Any]:
        """`concurrency` loops of CheckIn calls, each through the devices in turn, from `start_at` to `end_at`;
        the calls completed inside that window."""
        ok, errors, latencies = 0, Counter[str](), []
        cpu_before = time.process_time()

        async def loop(k: int) -> None:
            nonlocal ok
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            i = k
            while time.monotonic() < end_at:
                device = i % len(self.ids)
                request = pb.FleetCheckInRequest(
                    attributes=ATTRIBUTES, current_version=self.first[device] or "", app_version=APP_VERSION
                )
                sent = time.monotonic()
                try:
                    await self.stub(device).CheckIn(request, metadata=self.metadata[device], timeout=CALL_SECONDS)
                    done = time.monotonic()
                    if done <= end_at:
                        ok += 1
                        latencies.append(done - sent)
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] += 1
                i += concurrency

        await asyncio.gather(*(loop(k) for k in range(concurrency)))
        return {
            "ok": ok,
            "errors": dict(errors),
            "latencies": latencies,
            "cpu_seconds": time.process_time() - cpu_before,
        }

    async def close(self) -> None:
        self._stopping = True
        for call in self._calls:
            call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


def fleet_client(conn: Connection, **kwargs: Any) -> None:
    """A client process: answers the parent's commands open / changes / check_in / stop, in that order."""
    try:
        raise_open_file_limit()
        asyncio.run(_serve(conn, **kwargs))
    except Exception as exc:  # the parent shows it; a traceback in a child would be lost
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


async def _serve(
    conn: Connection, *, target: str, ca_pem: bytes, token_key: bytes, ids: list[str], per_connection: int
) -> None:
    devices = Devices(target, ca_pem, token_key, ids, per_connection)
    try:
        while True:
            command, arguments = await receive_command(conn)
            if command == "stop":
                return
            if command == "open":
                conn.send(await devices.open_all())
            elif command == "changes":
                conn.send(await devices.changes(**arguments))
            elif command == "check_in":
                conn.send(await devices.check_in(**arguments))
    finally:
        await devices.close()


# ---- the run --------------------------------------------------------------------------------------------------


def ask_all(clients: list[ClientProcess], command: str, timeout: float, **arguments: Any) -> list[Any]:
    for client in clients:
        client.send(command, **arguments)
    return [client.receive(timeout) for client in clients]


async def abort(gateway: GatewayProcess, held: FleetView, aborted: FleetView) -> tuple[float, float]:
    """Put `aborted` over a connection opened beforehand; (when the call was sent, when it was answered)."""
    async with Admin(gateway) as admin:
        await admin.put_view(held, {})  # the view held again: connects, and changes nothing
        sent = time.monotonic()
        await admin.put_view(aborted, {})
        return sent, time.monotonic()


async def setup(gateway: GatewayProcess, view: FleetView, models: list[bytes], key: SigningKey) -> None:
    async with Admin(gateway) as admin:
        for model in models:
            await admin.publish(model)
        await admin.put_view(view, {digest_of(m): signed_release(m, key) for m in models})


def run(
    devices: int,
    clients: int,
    per_connection: int,
    canary_weight: float,
    propagation_timeout: float,
    checkin_seconds: float,
    checkin_concurrency: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    open_files = raise_open_file_limit()
    stable_model, candidate_model = model_artifact("stable", MODEL_BYTES), model_artifact("candidate", MODEL_BYTES)
    stable, candidate = digest_of(stable_model), digest_of(candidate_model)
    rollout = fleet_view(stable, candidate, canary_weight, generation=1)
    ids = device_ids(devices)
    canaries = sum(assign(rollout, d, ATTRIBUTES).role == Role.CANARY for d in ids)
    # Everything slow here scales with the fleet: opening thousands of TLS connections takes seconds.
    open_timeout = 60 + devices / 50
    with tempfile.TemporaryDirectory(prefix="bench-gateway-fleet-") as tmp:
        gateway = start_gateway(Path(tmp), max_watch_streams=max(20_000, 2 * devices), profile=profile)
        processes: list[ClientProcess] = []
        try:
            asyncio.run(setup(gateway, rollout, [stable_model, candidate_model], SigningKey.generate()))
            rss_at_rest = gateway.rss()
            shares = [ids[k::clients] for k in range(clients)]
            processes = start_clients(
                fleet_client,
                [dict(target=gateway.target, ca_pem=gateway.ca_pem, token_key=gateway.token_key, ids=share,
                      per_connection=per_connection) for share in shares],
            )  # fmt: skip
            opened = ask_all(processes, "open", open_timeout)
            streams = gateway.metric("fedfleet_gateway_watch_streams")
            rss_streams = gateway.rss()

            aborted = fleet_view(stable, candidate, 0.0, generation=2)
            sent, acked = asyncio.run(abort(gateway, rollout, aborted))
            changes = ask_all(processes, "changes", propagation_timeout + 30,
                              candidate=candidate, until=sent + propagation_timeout)  # fmt: skip
            delays = [t - sent for c in changes for t in c["changed_at"]]

            cpu_before = gateway.cpu_seconds()
            start_at = time.monotonic() + 1.0  # every process has its command by then
            check_ins = ask_all(processes, "check_in", checkin_seconds + CALL_SECONDS + 30,
                                start_at=start_at, end_at=start_at + checkin_seconds,
                                concurrency=checkin_concurrency)  # fmt: skip
            gateway_cpu = gateway.cpu_seconds() - cpu_before
            clients_cpu = sum(c["cpu_seconds"] for c in check_ins)
            latencies = [t for c in check_ins for t in c["latencies"]]
            completed = sum(c["ok"] for c in check_ins)
            result: dict[str, Any] = {
                "devices": devices,
                "client_processes": clients,
                "devices_per_connection": per_connection,
                "open_file_limit": open_files,
                "streams_opened": sum(o["opened"] for o in opened),
                "stream_open_errors": dict(sum((Counter(o["errors"]) for o in opened), Counter())),
                "streams_open_seconds": round(max(o["seconds"] for o in opened), 1),
                "gateway_watch_streams_gauge": streams,
                "gateway_rss_at_rest_mb": mb(rss_at_rest),
                "gateway_rss_with_streams_mb": mb(rss_streams),
                "gateway_rss_per_stream_kb": round((rss_streams - rss_at_rest) / max(1, devices) / 1024, 1),
                "canary_weight": canary_weight,
                "canary_devices_expected": canaries,
                "canary_devices_seen": sum(o["first_versions"].get(candidate, 0) for o in opened),
                "abort_put_fleet_view_ms": round((acked - sent) * 1000, 1),
                "abort_devices_moved": len(delays),
                "abort_devices_missed": sum(c["expected"] for c in changes) - len(delays),
                "abort_devices_told_wrongly": sum(c["unexpected"] for c in changes),
                "abort_propagation_p50_ms": percentile_ms(delays, 50),
                "abort_propagation_p99_ms": percentile_ms(delays, 99),
                "abort_propagation_max_ms": round(max(delays, default=float("nan")) * 1000, 1),
                "checkin_window_seconds": checkin_seconds,
                "checkin_concurrency": checkin_concurrency * clients,
                "checkins_completed": completed,
                "checkins_per_second": round(completed / checkin_seconds, 1),
                "checkin_errors": dict(sum((Counter(c["errors"]) for c in check_ins), Counter())),
                "checkin_p50_ms": percentile_ms(latencies, 50),
                "checkin_p99_ms": percentile_ms(latencies, 99),
                "gateway_cpu_share_during_checkins": round(gateway_cpu / checkin_seconds, 2),
                "clients_cpu_share_during_checkins": round(clients_cpu / checkin_seconds, 2),
                "gateway_rss_after_checkins_mb": mb(gateway.rss()),
                "gateway_peak_rss_mb": mb(gateway.peak_rss()),
            }
        finally:
            for process in processes:
                process.close()
            exit_code = gateway.stop()
        result["gateway_exit"] = exit_code
        return result


def bars(result: dict[str, Any]) -> list[str]:
    """What the run missed, one line each; empty when it passed."""
    missed = []
    if result["streams_opened"] != result["devices"]:
        missed.append(f"only {result['streams_opened']} of {result['devices']} streams opened")
    if result["canary_devices_seen"] != result["canary_devices_expected"]:
        missed.append(
            f"{result['canary_devices_seen']} devices ran the candidate, {result['canary_devices_expected']} expected"
        )
    if result["abort_devices_missed"] or result["abort_devices_told_wrongly"]:
        missed.append(
            f"abort: {result['abort_devices_missed']} canary devices not moved back, "
            f"{result['abort_devices_told_wrongly']} other devices told of a change"
        )
    if not result["abort_propagation_p99_ms"] < PROPAGATION_BAR_P99_SECONDS * 1000:
        missed.append(f"abort propagation p99 {result['abort_propagation_p99_ms']} ms ≥ 2000 ms")
    if not result["checkins_per_second"] >= CHECKIN_BAR_PER_SECOND:
        missed.append(f"check-in throughput {result['checkins_per_second']}/s < {CHECKIN_BAR_PER_SECOND:.0f}/s")
    if result["gateway_exit"] != 0:
        missed.append(f"the gateway exited {result['gateway_exit']} on SIGTERM")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4, help="client processes the devices are spread over")
    parser.add_argument("--devices-per-connection", type=int, default=1, help="1: each device its own TLS link")
    parser.add_argument("--canary-weight", type=float, default=50.0, help="percent of the fleet on the candidate")
    parser.add_argument("--propagation-timeout", type=float, default=30.0, help="seconds to wait for the abort")
    parser.add_argument("--checkin-seconds", type=float, default=10.0, help="the check-in window")
    parser.add_argument("--checkin-concurrency", type=int, default=32, help="calls in flight per client process")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/...)")
    parser.add_argument("--profile", type=Path, default=None, help="run the gateway under cProfile, stats here")
    args = parser.parse_args()
    if args.devices < 1 or args.clients < 1 or args.devices_per_connection < 1 or args.checkin_concurrency < 1:
        parser.error("--devices, --clients, --devices-per-connection and --checkin-concurrency must be ≥ 1")
    if not 0 < args.canary_weight <= 100:
        parser.error("--canary-weight must be in (0, 100]")
    if args.checkin_seconds <= 0 or args.propagation_timeout <= 0:
        parser.error("--checkin-seconds and --propagation-timeout must be > 0")
    result = run(
        args.devices,
        min(args.clients, args.devices),
        args.devices_per_connection,
        args.canary_weight,
        args.propagation_timeout,
        args.checkin_seconds,
        args.checkin_concurrency,
        args.profile.resolve() if args.profile else None,
    )
    missed = bars(result)
    result["bars_missed"] = missed
    path = write_result("gateway_fleet", result, args.out)
    for name, value in result.items():
        print(f"{name}: {value}")
    print(
        f"{'FAIL' if missed else 'PASS'}: {result['devices']} streams, gateway RSS "
        f"{result['gateway_rss_with_streams_mb']} MB; abort p50 {result['abort_propagation_p50_ms']} ms, "
        f"p99 {result['abort_propagation_p99_ms']} ms; {result['checkins_per_second']} check-ins/s"
        + "".join(f"\n  missed: {m}" for m in missed)
        + f"\n  written to {path}"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

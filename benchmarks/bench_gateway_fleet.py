"""One fleet gateway process holding the WatchAssignment streams of 10,000 devices, on this machine.

    python benchmarks/bench_gateway_fleet.py [--devices 10000] [--clients 4] [--canary-weight 50]
        [--checkin-client go|python] [--checkin-devices 1000] [--checkin-seconds 10] [--checkin-concurrency 128]
        [--out benchmarks/results/gateway_fleet.json]

The gateway is `fedfleet gateway` in its own process (TLS, generated keys), as in its pod. The devices live in
`--clients` separate processes; each device has its own token and, by default, its own TLS connection, and
holds one WatchAssignment stream (raw gRPC stubs: the stream is what is measured, not the device SDK). The
operator's side publishes a stable and a candidate model and a view that puts `--canary-weight` percent of
the fleet on the candidate. Then:

1. RSS: the gateway's resident memory at rest and with every stream open (and its peak).
2. Abort propagation: the operator puts the same rollout at weight 0 (an abort). Each device records when its
   stream delivered its changed assignment; the time from the PutFleetView call to that moment, p50 / p99
   over the devices whose assignment changed. Bar: p99 < 2 s, every canary device moved back and no other
   device heard anything.
3. Check-in throughput: CheckIn calls, `--checkin-concurrency` in flight, over a fixed window with every
   stream still open; completed calls per second. Bar: ≥ 2,000/s. By default the calls come from the Go load
   generator in benchmarks/checkin_load (built with the local Go toolchain), as `--checkin-devices` devices
   each on a connection of its own: a Python gRPC client spends about as much CPU per call as the gateway,
   and on a 2-core machine that CPU would be taken from the gateway being measured. `--checkin-client
   python` makes the stream-holding processes call instead, over their devices' own connections.

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
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from checkin_load_driver import GoCheckIns
from checkin_load_driver import build as build_checkin_load
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
    device_token,
    machine,
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


@dataclass(frozen=True)
class Settings:
    devices: int = 10_000
    clients: int = 4  # processes holding the streams
    per_connection: int = 1  # devices sharing one TLS connection
    canary_weight: float = 50.0
    propagation_timeout: float = 30.0
    checkin_client: str = "go"  # or "python": the stream-holding processes call CheckIn themselves
    checkin_devices: int = 1000  # devices the Go client checks in with, each on its own connection
    checkin_seconds: float = 10.0
    checkin_concurrency: int = 128  # calls in flight, in total
    keepalive_seconds: float = 30.0
    profile: Path | None = None


def check_ins_from_python(
    processes: list[ClientProcess], gateway: GatewayProcess, settings: Settings
) -> dict[str, Any]:
    """The stream-holding processes call CheckIn over their devices' own connections."""
    per_process = -(-settings.checkin_concurrency // len(processes))
    cpu_before = gateway.cpu_seconds()
    start_at = time.monotonic() + 1.0  # every process has its command by then
    answers = ask_all(processes, "check_in", settings.checkin_seconds + CALL_SECONDS + 30,
                      start_at=start_at, end_at=start_at + settings.checkin_seconds,
                      concurrency=per_process)  # fmt: skip
    latencies = [t for a in answers for t in a["latencies"]]
    return {
        "ok": sum(a["ok"] for a in answers),
        "errors": dict(sum((Counter(a["errors"]) for a in answers), Counter())),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "clients_cpu_seconds": sum(a["cpu_seconds"] for a in answers),
        "gateway_cpu_seconds": gateway.cpu_seconds() - cpu_before,
        "concurrency": per_process * len(processes),
    }


def check_ins_from_go(
    binary: Path, gateway: GatewayProcess, ids: list[str], version: str, settings: Settings
) -> dict[str, Any]:
    """The Go client calls CheckIn as the first `checkin_devices` devices, each on a connection of its own."""
    chosen = ids[: settings.checkin_devices]
    devices = []
    for device in chosen:
        request = pb.FleetCheckInRequest(attributes=ATTRIBUTES, current_version=version, app_version=APP_VERSION)
        devices.append((device_token(gateway.token_key, device), request.SerializeToString()))
    client = GoCheckIns(binary, gateway.target, gateway.root / "tls/ca.crt", devices, settings.checkin_concurrency,
                        ready_seconds=60 + len(devices) / 50)  # fmt: skip
    try:
        cpu_before = gateway.cpu_seconds()
        answer = client.run(settings.checkin_seconds, settings.checkin_seconds + CALL_SECONDS + 30)
        gateway_cpu = gateway.cpu_seconds() - cpu_before
    finally:
        client.close()
    return {
        "ok": answer["ok"],
        "errors": answer["errors"],
        "p50_ms": answer["p50_ms"],
        "p99_ms": answer["p99_ms"],
        "clients_cpu_seconds": answer["cpu_seconds"],
        "gateway_cpu_seconds": gateway_cpu,
        "concurrency": settings.checkin_concurrency,
    }


def run(settings: Settings) -> dict[str, Any]:
    measured_on = machine()
    open_files = raise_open_file_limit()
    binary = build_checkin_load() if settings.checkin_client == "go" else None
    stable_model, candidate_model = model_artifact("stable", MODEL_BYTES), model_artifact("candidate", MODEL_BYTES)
    stable, candidate = digest_of(stable_model), digest_of(candidate_model)
    rollout = fleet_view(stable, candidate, settings.canary_weight, generation=1)
    ids = device_ids(settings.devices)
    canaries = sum(assign(rollout, d, ATTRIBUTES).role == Role.CANARY for d in ids)
    clients = min(settings.clients, settings.devices)
    # Everything slow here scales with the fleet: opening thousands of TLS connections takes seconds.
    open_timeout = 60 + settings.devices / 50
    with tempfile.TemporaryDirectory(prefix="bench-gateway-fleet-") as tmp:
        gateway = start_gateway(
            Path(tmp),
            max_watch_streams=max(20_000, 2 * settings.devices),
            keepalive_seconds=settings.keepalive_seconds,
            profile=settings.profile,
        )
        processes: list[ClientProcess] = []
        try:
            asyncio.run(setup(gateway, rollout, [stable_model, candidate_model], SigningKey.generate()))
            rss_at_rest = gateway.rss()
            processes = start_clients(
                fleet_client,
                [dict(target=gateway.target, ca_pem=gateway.ca_pem, token_key=gateway.token_key, ids=ids[k::clients],
                      per_connection=settings.per_connection) for k in range(clients)],
            )  # fmt: skip
            opened = ask_all(processes, "open", open_timeout)
            streams = gateway.metric("fedfleet_gateway_watch_streams")
            rss_streams = gateway.rss()

            aborted = fleet_view(stable, candidate, 0.0, generation=2)
            sent, acked = asyncio.run(abort(gateway, rollout, aborted))
            changes = ask_all(processes, "changes", settings.propagation_timeout + 30,
                              candidate=candidate, until=sent + settings.propagation_timeout)  # fmt: skip
            delays = [t - sent for c in changes for t in c["changed_at"]]

            if binary is not None:
                check_ins = check_ins_from_go(binary, gateway, ids, stable, settings)
            else:
                check_ins = check_ins_from_python(processes, gateway, settings)
            window = settings.checkin_seconds
            result: dict[str, Any] = {
                "devices": settings.devices,
                "client_processes": clients,
                "devices_per_connection": settings.per_connection,
                "watch_keepalive_seconds": settings.keepalive_seconds,
                "open_file_limit": open_files,
                "streams_opened": sum(o["opened"] for o in opened),
                "stream_open_errors": dict(sum((Counter(o["errors"]) for o in opened), Counter())),
                "streams_open_seconds": round(max(o["seconds"] for o in opened), 1),
                "gateway_watch_streams_gauge": streams,
                "gateway_rss_at_rest_mb": mb(rss_at_rest),
                "gateway_rss_with_streams_mb": mb(rss_streams),
                "gateway_rss_per_stream_kb": round((rss_streams - rss_at_rest) / max(1, settings.devices) / 1024, 1),
                "canary_weight": settings.canary_weight,
                "canary_devices_expected": canaries,
                "canary_devices_seen": sum(o["first_versions"].get(candidate, 0) for o in opened),
                "abort_put_fleet_view_ms": round((acked - sent) * 1000, 1),
                "abort_devices_moved": len(delays),
                "abort_devices_missed": sum(c["expected"] for c in changes) - len(delays),
                "abort_devices_told_wrongly": sum(c["unexpected"] for c in changes),
                "abort_propagation_p50_ms": percentile_ms(delays, 50),
                "abort_propagation_p99_ms": percentile_ms(delays, 99),
                "abort_propagation_max_ms": round(max(delays, default=float("nan")) * 1000, 1),
                "checkin_client": settings.checkin_client,
                "checkin_connections": settings.checkin_devices if binary is not None else "the streams' own",
                "checkin_window_seconds": window,
                "checkin_concurrency": check_ins["concurrency"],
                "checkins_completed": check_ins["ok"],
                "checkins_per_second": round(check_ins["ok"] / window, 1),
                "checkin_errors": check_ins["errors"],
                "checkin_p50_ms": check_ins["p50_ms"],
                "checkin_p99_ms": check_ins["p99_ms"],
                "gateway_cpu_share_during_checkins": round(check_ins["gateway_cpu_seconds"] / window, 2),
                "clients_cpu_share_during_checkins": round(check_ins["clients_cpu_seconds"] / window, 2),
                "gateway_rss_after_checkins_mb": mb(gateway.rss()),
                "gateway_peak_rss_mb": mb(gateway.peak_rss()),
            }
        finally:
            for process in processes:
                process.close()
            exit_code = gateway.stop()
        result["gateway_exit"] = exit_code
        result["machine"] = measured_on
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
    default = Settings()
    parser.add_argument("--devices", type=int, default=default.devices)
    parser.add_argument("--clients", type=int, default=default.clients, help="processes holding the streams")
    parser.add_argument("--devices-per-connection", type=int, default=1, help="1: each device its own TLS link")
    parser.add_argument("--canary-weight", type=float, default=default.canary_weight, help="percent on the candidate")
    parser.add_argument("--propagation-timeout", type=float, default=30.0, help="seconds to wait for the abort")
    parser.add_argument("--checkin-client", choices=("go", "python"), default=default.checkin_client,
                        help="who calls CheckIn: the Go load generator, or the stream-holders")  # fmt: skip
    parser.add_argument("--checkin-devices", type=int, default=default.checkin_devices,
                        help="devices (own connections) the Go client checks in as")  # fmt: skip
    parser.add_argument("--checkin-seconds", type=float, default=default.checkin_seconds, help="the check-in window")
    parser.add_argument("--checkin-concurrency", type=int, default=default.checkin_concurrency,
                        help="CheckIn calls in flight, in total")  # fmt: skip
    parser.add_argument("--keepalive-seconds", type=float, default=30.0, help="the gateway's watchKeepaliveSeconds")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/...)")
    parser.add_argument("--profile", type=Path, default=None, help="run the gateway under cProfile, stats here")
    args = parser.parse_args()
    counts = (args.devices, args.clients, args.devices_per_connection, args.checkin_devices, args.checkin_concurrency)
    if min(counts) < 1:
        parser.error("--devices, --clients, --devices-per-connection, --checkin-devices, --checkin-concurrency: ≥ 1")
    if not 0 < args.canary_weight <= 100:
        parser.error("--canary-weight must be in (0, 100]")
    if min(args.checkin_seconds, args.propagation_timeout, args.keepalive_seconds) <= 0:
        parser.error("--checkin-seconds, --propagation-timeout and --keepalive-seconds must be > 0")
    settings = Settings(
        devices=args.devices,
        clients=args.clients,
        per_connection=args.devices_per_connection,
        canary_weight=args.canary_weight,
        propagation_timeout=args.propagation_timeout,
        checkin_client=args.checkin_client,
        checkin_devices=min(args.checkin_devices, args.devices),
        checkin_seconds=args.checkin_seconds,
        checkin_concurrency=args.checkin_concurrency,
        keepalive_seconds=args.keepalive_seconds,
        profile=args.profile.resolve() if args.profile else None,
    )
    try:
        result = run(settings)
    except RuntimeError as exc:  # the gateway or the Go client did not start: say why, no traceback
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
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

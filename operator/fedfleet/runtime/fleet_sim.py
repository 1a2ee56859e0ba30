"""`fedfleet fleet-sim`: a simulated device fleet that follows its rollouts through a real fleet gateway.

Each device runs the real device SDK (`device.model_updates`) over gRPC and TLS with its own fleet token:
it watches its assignment, downloads, verifies the signed release, evaluates the model on its own held-out
MNIST examples and reports health. Every `--status-every` seconds one JSON line says how many devices run each
version — counted from the devices, not from the gateway — so a person or a test can follow a rollout from
the fleet's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from fedfleet.security.signing import PublicKey, TrustedKeys
from fedfleet.sim.rollout_devices import OfflineWindows, RolloutFleetSpec
from fedfleet.sim.rollout_fleet import RolloutFleet, holdout_pool
from fedfleet.sim.rollout_links import grpc_links


@dataclass(frozen=True)
class FleetSimSettings:
    gateway: str  # host:port
    fleet: str
    token_key: bytes
    ca_pem: bytes
    trusted_keys: tuple[str, ...]  # "ed25519:<base64>" public keys the devices accept releases from
    devices: int
    seed: int = 0
    duration_seconds: float | None = None  # None: until SIGTERM/SIGINT
    status_every_seconds: float = 1.0
    report_every_seconds: float | None = 5.0
    offline_fraction: float = 0.0


def read_trusted_keys(path: Path) -> tuple[str, ...]:
    """One public key per line (the fleet ConfigMap's `trusted-keys`); ValueError naming the line."""
    keys = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                keys.append(PublicKey.from_text(line.strip()).to_text())
            except ValueError as err:
                raise ValueError(f"{path}:{number}: not a public key ({err})") from None
    if not keys:
        raise ValueError(f"{path}: no trusted keys: devices would refuse every release")
    return tuple(keys)


async def run_fleet_sim(settings: FleetSimSettings, out: TextIO = sys.stdout) -> int:
    trusted = TrustedKeys(PublicKey.from_text(text) for text in settings.trusted_keys)
    spec = RolloutFleetSpec(
        devices=settings.devices, seed=settings.seed, offline=OfflineWindows(fraction=settings.offline_fraction)
    )
    links = grpc_links(settings.gateway, fleet=settings.fleet, token_key=settings.token_key, ca_pem=settings.ca_pem)
    fleet = RolloutFleet(spec, holdout_pool(), links, trusted, report_every_seconds=settings.report_every_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(fleet.run(stop))
    started = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.status_every_seconds)
            versions = {str(v): n for v, n in fleet.running_versions().items()}
            line = {"t": round(time.monotonic() - started, 3), "online": len(fleet.online()), "versions": versions}
            out.write(json.dumps(line, sort_keys=True) + "\n")
            out.flush()
            if settings.duration_seconds is not None and time.monotonic() - started >= settings.duration_seconds:
                stop.set()
    finally:
        stop.set()
        totals = await running
    if totals.errors:
        first = next(iter(totals.errors.items()))
        print(f"fleet-sim: {len(totals.errors)} devices stopped; first: {first[0]}: {first[1]}", file=sys.stderr)
        return 1
    return 0

"""A few dozen simulated devices over real gRPC (TLS on 127.0.0.1, fleet tokens) against a real fleet gateway: an
assignment change reaches every connected device, the devices run what the pure assignment function says (counted
from the devices), the gateway's own count of who runs what agrees, an abort brings everyone back without a
download, a download resumes at an offset, and a device whose token is refused stops with the reason."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from busy_machine import MachineSpeed
from fedfleet.api.aggregator_config import Endpoint, TlsSection
from fedfleet.device.fleet_grpc import GrpcFleetLink
from fedfleet.device.model_updates import LinkError
from fedfleet.gateway.app import GatewayApp, GatewaySecurity, prepare_security
from fedfleet.gateway.config import GatewayAuth, GatewayConfig
from fedfleet.persist.artifact_store import ArtifactStore
from fedfleet.rollout.assignment import assign
from fedfleet.security.signing import SigningKey, TrustedKeys
from fedfleet.security.tokens import fleet_identity, issue_token
from fedfleet.sim.rollout_devices import RolloutFleetSpec
from fedfleet.sim.rollout_fleet import RolloutFleet, holdout_pool
from fedfleet.sim.rollout_links import grpc_links
from rollout_support import FleetHarness, artifact_bytes, run_async

DEVICES = 36


@dataclass
class Gateway:
    app: GatewayApp
    security: GatewaySecurity
    harness: FleetHarness

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    def link(self, device_id: str, *, token: str | None = None, app_version: str = "") -> GrpcFleetLink:
        token = token or issue_token(self.security.token_key, fleet_identity("default"), device_id, 3600)
        return GrpcFleetLink(
            self.target, token=token, root_certificates=self.security.ca_pem, app_version=app_version, call_seconds=30
        )


@asynccontextmanager
async def gateway(root: Path, key: SigningKey) -> AsyncIterator[Gateway]:
    config = GatewayConfig(
        listen=Endpoint(host="127.0.0.1", port=0),
        http=None,
        tls=TlsSection(
            cert=root / "tls/server.crt", key=root / "tls/server.key", ca=root / "tls/ca.crt", generate=True
        ),
        auth=GatewayAuth(token_key=root / "token.key", admin_token=root / "admin.token", generate=True),
        artifact_dir=root / "artifacts",
        state_dir=root / "state",
        fleets=["default"],
        check_in_interval_seconds=60.0,
        watch_keepalive_seconds=5.0,
    )
    security = prepare_security(config)
    store = ArtifactStore(config.artifact_dir)
    app = GatewayApp(config, security, store)
    await app.start()
    try:
        yield Gateway(app, security, FleetHarness(app.gateway, store, key))
    finally:
        await app.stop()


def expected(g: Gateway, fleet: RolloutFleet) -> Counter[str | None]:
    snapshot = g.app.gateway.states.get("default")
    assert snapshot is not None
    return Counter(assign(snapshot.view, d.device_id, d.attributes).version for d in fleet.devices)


def _laggards(fleet: RolloutFleet) -> str:
    """Devices not running what they were last offered, with what they went through: why they lag."""
    lagging = {
        i: (u.assigned.version[:14] if u.assigned else None, u.running_version and u.running_version[:14], u.stats)
        for i, u in fleet.updaters.items()
        if u.assigned is None or u.running_version != u.assigned.version
    }
    return f"devices behind their offer: {lagging}; errors: {fleet.errors}"


async def converged(fleet: RolloutFleet, want: Counter[str | None], seconds: float, what: str) -> float:
    """Wait until the devices run `want`; returns how long it took. `seconds` is a safety net scaled to the
    machine's speed, never the figure under test."""
    started = time.monotonic()
    while fleet.running_versions() != want:
        if time.monotonic() - started > seconds:
            raise AssertionError(
                f"never converged: {what}: {dict(fleet.running_versions())} != {dict(want)}; {_laggards(fleet)}"
            )
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.timeout(300)
@run_async
async def test_an_assignment_change_reaches_every_connected_device_over_grpc(
    tmp_path: Path, machine_speed: MachineSpeed
) -> None:
    key = SigningKey.generate()
    patience = machine_speed.seconds(30.0)
    async with gateway(tmp_path, key) as g:
        stable = g.harness.publish(artifact_bytes(seed=1))
        candidate = g.harness.publish(artifact_bytes(seed=2))
        g.harness.set_view(stable=stable)

        links = grpc_links(g.target, fleet="default", token_key=g.security.token_key, ca_pem=g.security.ca_pem)
        fleet = RolloutFleet(
            RolloutFleetSpec(devices=DEVICES, seed=21), holdout_pool(), links, TrustedKeys([key.public()])
        )
        stop = asyncio.Event()
        running = asyncio.create_task(fleet.run(stop))
        try:
            await converged(fleet, Counter({stable: DEVICES}), patience, "everyone on stable")

            g.harness.set_view(stable=stable, candidate=candidate, weight=40.0)
            want = expected(g, fleet)
            assert 0 < want[candidate] < DEVICES
            await converged(fleet, want, patience, "the canary on the candidate")

            # The gateway counts who runs what from the devices' check-ins: the same figures.
            async def gateway_agrees() -> None:
                while True:
                    counted: Counter[str | None] = Counter()
                    for (version, _), n in g.app.gateway.summary("default").devices.items():
                        counted[version] += n
                    if counted == want:
                        return
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(gateway_agrees(), patience)
            downloads = fleet.totals().stats.downloads
            assert downloads == DEVICES + want[candidate]

            g.harness.set_view(stable=stable, candidate=candidate, weight=0.0)  # aborted
            await converged(fleet, Counter({stable: DEVICES}), patience, "everyone back on stable")
            totals = fleet.totals().stats
            assert totals.downloads == downloads and totals.rollbacks == want[candidate]
            assert fleet.errors == {}
        finally:
            stop.set()
            await asyncio.wait_for(running, patience)


@pytest.mark.timeout(120)
@run_async
async def test_a_download_resumes_at_an_offset_and_a_refused_token_is_fatal(tmp_path: Path) -> None:
    key = SigningKey.generate()
    async with gateway(tmp_path, key) as g:
        data = artifact_bytes(seed=3, architecture="2nn")
        digest = g.harness.publish(data, architecture="2nn")
        g.harness.set_view(stable=digest)
        async with g.link("dev-00001") as link:
            answer = await link.check_in({"os": "android"}, None)
            assert answer.offer is not None and answer.offer.version == digest
            assert answer.offer.release is not None and answer.offer.release.record.size == len(data)
            tail = b"".join([chunk async for chunk in link.download(digest, 300_000)])
            assert tail == data[300_000:]

        forged = issue_token(b"0" * 32, fleet_identity("default"), "dev-00002", 3600)  # not the gateway's key
        async with g.link("dev-00002", token=forged) as link:
            with pytest.raises(LinkError) as refused:
                await link.check_in({"os": "android"}, None)
        assert refused.value.fatal and refused.value.reason == "token_bad_signature"


@pytest.mark.timeout(300)
@run_async
async def test_fleet_sim_command_follows_a_rollout_and_reports_versions_from_the_devices(
    tmp_path: Path, machine_speed: MachineSpeed
) -> None:
    """`fedfleet fleet-sim` as its own process: its status lines count what the devices run."""
    import json
    import sys

    key = SigningKey.generate()
    patience = machine_speed.seconds(60.0)
    async with gateway(tmp_path, key) as g:
        stable = g.harness.publish(artifact_bytes(seed=1))
        candidate = g.harness.publish(artifact_bytes(seed=2))
        g.harness.set_view(stable=stable, candidate=candidate, weight=50.0)
        (tmp_path / "fleet.key").write_text(g.security.token_key.hex() + "\n")
        (tmp_path / "ca.crt").write_bytes(g.security.ca_pem)
        (tmp_path / "trusted").write_text(key.public().to_text() + "\n")
        devices = 20
        argv = [
            sys.executable, "-m", "fedfleet.cli", "fleet-sim", "--gateway", g.target, "--token-key",
            str(tmp_path / "fleet.key"), "--ca", str(tmp_path / "ca.crt"), "--trusted-keys", str(tmp_path / "trusted"),
            "--devices", str(devices), "--status-every", "0.5",
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        snapshot = g.app.gateway.states.get("default")
        assert snapshot is not None
        from fedfleet.sim.rollout_devices import build_devices

        pool = holdout_pool()
        want = Counter(
            assign(snapshot.view, d.device_id, d.attributes).version
            for d in build_devices(RolloutFleetSpec(devices=devices), len(pool.y))
        )
        try:
            started = time.monotonic()
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), patience)
                assert line, "fleet-sim ended early"
                status = json.loads(line)
                if Counter({k: v for k, v in status["versions"].items()}) == Counter(
                    {str(k): v for k, v in want.items()}
                ):
                    break
                assert time.monotonic() - started < patience, f"never converged: {status} != {dict(want)}"
        finally:
            proc.terminate()
            code = await asyncio.wait_for(proc.wait(), patience)
        assert code == 0
        assert 0 < want[candidate] < devices

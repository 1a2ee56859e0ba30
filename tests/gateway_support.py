"""What the gateway tests share: a Gateway core on a temporary state dir, fleet views, artifacts and signed
release records, and an injected clock.

STAND-IN: `MemoryStore` plays fedfleet.persist.artifact_store until that branch is merged; it implements only
what the gateway's ArtifactStore Protocol (fedfleet.gateway.contracts) asks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from fedfleet.gateway.core import Gateway, GatewaySettings, SignedParts
from fedfleet.gateway.fleet_state import FleetStates
from fedfleet.gateway.metrics import GatewayMetrics
from fedfleet.rollout.assignment import FleetView, RolloutView
from fedfleet.rollout.cohort import bucket
from fedfleet.rollout.selector import DeviceSelector

# ---- stand-in for fedfleet.persist.artifact_store ---------------------------------------------------------


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemoryStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        self.blobs[digest_of(data)] = data
        return digest_of(data)

    def put_stream(self, chunks: Iterable[bytes], expected_digest: str, max_bytes: int) -> str:
        data = b""
        for chunk in chunks:
            data += chunk
            if len(data) > max_bytes:
                raise ValueError(f"more than {max_bytes} bytes")
        if digest_of(data) != expected_digest:
            raise ValueError(f"the bytes hash to {digest_of(data)}, not {expected_digest}")
        return self.put(data)

    def has(self, digest: str) -> bool:
        return digest in self.blobs

    def size(self, digest: str) -> int:
        return len(self.blobs[digest])

    def read_chunk(self, digest: str, offset: int, length: int) -> bytes:
        return self.blobs[digest][offset : offset + length]


# ---- helpers ----------------------------------------------------------------------------------------------

FLEET = "default"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def artifact(tag: str, size: int = 3000) -> bytes:
    """Bytes standing for a model artifact (the gateway treats artifacts as opaque bytes)."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def release(data: bytes, key_id: str = "ed25519:0123456789abcdef") -> SignedParts:
    record = {"digest": digest_of(data), "size": len(data), "key_id": key_id, "version": digest_of(data)}
    body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return SignedParts(record=body, signature=b"s" * 64, key_id=key_id)


def view_json(
    stable: str | None,
    candidate: str | None = None,
    weight: float = 0.0,
    generation: int = 1,
    *,
    fleet: str = FLEET,
    selector: Mapping[str, str] | None = None,
    control: bool = False,
    revision: int = 1,
) -> bytes:
    rollouts: tuple[RolloutView, ...] = ()
    if candidate is not None:
        chosen = DeviceSelector.from_dict({"matchLabels": dict(selector)} if selector else {})
        rollouts = (RolloutView("mnist", "salt-1", revision, stable, candidate, weight, chosen, control),)
    return json.dumps(FleetView(fleet, stable, rollouts, generation).to_dict()).encode()


@dataclass
class Bench:
    """A Gateway core over a memory store, with the artifacts `v1` and `v2` published."""

    gateway: Gateway
    store: MemoryStore
    registry: CollectorRegistry
    clock: FakeClock
    state_dir: Path
    v1: bytes
    v2: bytes

    @property
    def d1(self) -> str:
        return digest_of(self.v1)

    @property
    def d2(self) -> str:
        return digest_of(self.v2)

    def put(self, view: bytes, *blobs: bytes) -> tuple[int, bool]:
        return self.gateway.put_fleet_view(FLEET, view, {digest_of(b): release(b) for b in blobs})

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def make_gateway(
    state_dir: Path,
    settings: GatewaySettings | None = None,
    store: MemoryStore | None = None,
    clock: FakeClock | None = None,
    fleets: tuple[str, ...] = (FLEET, "other"),
) -> tuple[Gateway, CollectorRegistry]:
    registry = CollectorRegistry()
    states = FleetStates(state_dir, fleets)
    states.load()
    gateway = Gateway(
        states,
        store or MemoryStore(),
        GatewayMetrics(registry),
        settings or GatewaySettings(check_in_interval_seconds=60.0, health_report_min_interval_seconds=5.0),
        state_dir / "incoming",
        clock or FakeClock(),
    )
    gateway.restored()
    return gateway, registry


def bench(state_dir: Path, settings: GatewaySettings | None = None) -> Bench:
    store, clock = MemoryStore(), FakeClock()
    v1, v2 = artifact("model v1"), artifact("model v2", 5000)
    store.put(v1)
    store.put(v2)
    gateway, registry = make_gateway(state_dir, settings, store, clock)
    return Bench(gateway, store, registry, clock, state_dir, v1, v2)


def canary_and_stable_devices(candidate_weight: float, count: int = 2) -> tuple[list[str], list[str]]:
    """Device ids the stand-in assigns to the canary and to stable under rollout 'mnist' (salt-1) at a weight."""
    canary, stable = [], []
    for i in range(10_000):
        device = f"dev-{i}"
        target = canary if bucket("salt-1", device) < round(candidate_weight * 100) else stable
        if len(target) < count:
            target.append(device)
        if len(canary) >= count and len(stable) >= count:
            return canary, stable
    raise AssertionError("not enough devices found")


# ---- a live gateway on loopback with TLS ------------------------------------------------------------------


@dataclass
class LiveGateway:
    """A GatewayApp on 127.0.0.1 (free ports) with a fresh CA, token key and admin secret."""

    app: Any  # fedfleet.gateway.app.GatewayApp
    store: MemoryStore
    ca_pem: bytes
    token_key: bytes
    admin_secret: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    def channel(self) -> Any:
        import grpc

        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        return grpc.aio.secure_channel(self.target, credentials)

    def device_metadata(self, device: str, fleet: str = FLEET, ttl: float = 3600.0) -> tuple[tuple[str, str], ...]:
        from fedfleet.security.tokens import fleet_identity, issue_token

        return (("authorization", f"Bearer {issue_token(self.token_key, fleet_identity(fleet), device, ttl)}"),)

    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_secret}"),)


async def start_gateway(state_dir: Path, **overrides: Any) -> LiveGateway:
    from fedfleet.api.aggregator_config import Endpoint
    from fedfleet.gateway.app import GatewayApp, GatewaySecurity
    from fedfleet.gateway.config import GatewayConfig
    from fedfleet.security.certs import generate_ca, issue_server_cert
    from fedfleet.security.tokens import new_key

    ca = generate_ca("test gateway CA")
    server = issue_server_cert(ca, ["localhost", "127.0.0.1"])
    security = GatewaySecurity(server.cert_pem, server.key_pem, ca.cert_pem, new_key(), new_key().hex())
    settings: dict[str, Any] = {
        "listen": Endpoint(host="127.0.0.1", port=0),
        "http": Endpoint(host="127.0.0.1", port=0),
        "state_dir": state_dir,
        "artifact_dir": state_dir / "artifacts",
        "fleets": [FLEET, "other"],
    }
    settings.update(overrides)
    store = MemoryStore()
    app = GatewayApp(GatewayConfig(**settings), security, store, registry=CollectorRegistry())
    await app.start()
    return LiveGateway(app, store, ca.cert_pem, security.token_key, security.admin_secret)

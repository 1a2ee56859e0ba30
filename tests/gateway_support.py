"""What the gateway tests share: a Gateway core on a temporary state dir with a real artifact store, fleet
views, valid model artifacts of a chosen size, release records signed with a real Ed25519 key, and an
injected clock."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from fedfleet.gateway.core import Gateway, GatewaySettings
from fedfleet.gateway.fleet_state import FleetStates
from fedfleet.gateway.metrics import GatewayMetrics
from fedfleet.gateway.releases import SignedParts
from fedfleet.models.artifact import ArtifactHeader, ModelArtifact, ModelMetadata, ReleaseRecord, digest_of, encode
from fedfleet.persist.artifact_store import ArtifactStore
from fedfleet.rollout.assignment import FleetView, RolloutView
from fedfleet.rollout.cohort import bucket
from fedfleet.rollout.selector import DeviceSelector
from fedfleet.security.signing import SigningKey

__all__ = ["digest_of"]

# ---- helpers ----------------------------------------------------------------------------------------------

FLEET = "default"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: The key the tests' operator signs releases with.
SIGNING_KEY = SigningKey.generate()


def artifact(tag: str, size: int = 3000) -> bytes:
    """A valid model artifact (softmax regression on 1 x s x s "images") of about `size` bytes, its weights
    seeded by `tag`: different tags give different digests."""
    side = max(1, math.isqrt(max(0, size - 400) // 8))
    n = side * side
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big"))
    header = ArtifactHeader(
        architecture="logistic",
        image_shape=(1, side, side),
        num_classes=2,
        layout=(("out.weight", (2, n)), ("out.bias", (2,))),
        metadata=ModelMetadata(
            job="demo/mnist", round=3, accuracy=0.9, epsilon=None, created="2026-11-29T17:41:46Z", source=tag
        ),
    )
    return encode(ModelArtifact(header, rng.standard_normal(2 * n + 2).astype(np.float32)))


def record_for(data: bytes, **changes: Any) -> ReleaseRecord:
    fields: dict[str, Any] = {
        "rollout": "demo/mnist", "revision": 1, "version": digest_of(data), "digest": digest_of(data),
        "size": len(data), "architecture": "logistic", "key_id": SIGNING_KEY.key_id,
        "issued_at": "2026-11-30T08:00:00Z",
    }  # fmt: skip
    fields.update(changes)
    return ReleaseRecord(**fields)


def release(data: bytes, **changes: Any) -> SignedParts:
    """The operator's signed release of `data`, as PutFleetView carries it (`changes` alter the record)."""
    record = record_for(data, **changes)
    signature = SIGNING_KEY.sign(record.signing_message())
    return SignedParts(record=record.canonical_bytes(), signature=signature, key_id=record.key_id)


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
    store: ArtifactStore
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
    store: ArtifactStore | None = None,
    clock: FakeClock | None = None,
    fleets: tuple[str, ...] = (FLEET, "other"),
) -> tuple[Gateway, CollectorRegistry]:
    registry = CollectorRegistry()
    states = FleetStates(state_dir, fleets)
    states.load()
    gateway = Gateway(
        states,
        store or ArtifactStore(state_dir / "artifacts"),
        GatewayMetrics(registry),
        settings or GatewaySettings(check_in_interval_seconds=60.0, health_report_min_interval_seconds=5.0),
        state_dir / "incoming",
        clock or FakeClock(),
    )
    gateway.restored()
    return gateway, registry


def bench(state_dir: Path, settings: GatewaySettings | None = None) -> Bench:
    store, clock = ArtifactStore(state_dir / "artifacts"), FakeClock()
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
    """A GatewayApp on 127.0.0.1 (free ports) with a fresh CA, token key, admin secret and publish secret."""

    app: Any  # fedfleet.gateway.app.GatewayApp
    store: ArtifactStore
    ca_pem: bytes
    token_key: bytes
    admin_secret: str
    publish_secret: str

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

    def publish_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.publish_secret}"),)


async def start_gateway(state_dir: Path, *, publish_secret: bool = True, **overrides: Any) -> LiveGateway:
    """`publish_secret`: whether the gateway has one (a config without auth.publishToken has none; the
    LiveGateway's is then a secret the gateway does not know). `overrides`: GatewayConfig fields."""
    from fedfleet.api.aggregator_config import Endpoint
    from fedfleet.gateway.app import GatewayApp, GatewaySecurity
    from fedfleet.gateway.config import GatewayConfig
    from fedfleet.security.certs import generate_ca, issue_server_cert
    from fedfleet.security.tokens import new_key

    ca = generate_ca("test gateway CA")
    server = issue_server_cert(ca, ["localhost", "127.0.0.1"])
    publish = new_key().hex()
    security = GatewaySecurity(
        server.cert_pem, server.key_pem, ca.cert_pem, new_key(), new_key().hex(), publish if publish_secret else None
    )
    settings: dict[str, Any] = {
        "listen": Endpoint(host="127.0.0.1", port=0),
        "http": Endpoint(host="127.0.0.1", port=0),
        "state_dir": state_dir,
        "artifact_dir": state_dir / "artifacts",
        "fleets": [FLEET, "other"],
    }
    settings.update(overrides)
    store = ArtifactStore(state_dir / "artifacts")
    app = GatewayApp(GatewayConfig(**settings), security, store, registry=CollectorRegistry())
    await app.start()
    return LiveGateway(app, store, ca.cert_pem, security.token_key, security.admin_secret, publish)

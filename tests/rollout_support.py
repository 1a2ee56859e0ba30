"""What the device-rollout tests share: real model artifacts, release records signed with real Ed25519 keys, and
offers as the fleet gateway sends them. Nothing here is a stand-in for the code under test."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from fedfleet.device.model_updates import ModelOffer
from fedfleet.models.artifact import (
    ArtifactHeader,
    ModelArtifact,
    ModelMetadata,
    ReleaseRecord,
    SignedRelease,
    digest_of,
    encode,
)
from fedfleet.models.canonical import format_time
from fedfleet.models.nets import Architecture, build_model
from fedfleet.models.params import flat_parameters, parameter_layout
from fedfleet.security.releases import sign_release
from fedfleet.security.signing import SigningKey

ISSUED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def artifact_bytes(
    seed: int = 0,
    *,
    architecture: Architecture = "logistic",
    image_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    scale: float = 1.0,
    weights: np.ndarray | None = None,
) -> bytes:
    """A valid artifact: a freshly initialised model (`seed`), its weights times `scale`, or `weights` given."""
    model = build_model(architecture, image_shape, num_classes, seed=seed)
    flat = flat_parameters(model) * np.float32(scale) if weights is None else np.asarray(weights, np.float32)
    header = ArtifactHeader(
        architecture=architecture,
        image_shape=image_shape,
        num_classes=num_classes,
        layout=tuple(parameter_layout(model)),
        metadata=ModelMetadata(
            job="demo", round=seed, accuracy=None, epsilon=None, created=format_time(ISSUED), source="tests"
        ),
    )
    return encode(ModelArtifact(header, flat))


def signed_release(
    data: bytes,
    key: SigningKey,
    *,
    rollout: str = "default/demo",
    revision: int = 1,
    architecture: str = "logistic",
    size: int | None = None,
    digest: str | None = None,
) -> SignedRelease:
    """A release record of `data` signed by `key`; `size`, `digest` and `architecture` can be made to lie."""
    record = ReleaseRecord(
        rollout=rollout,
        revision=revision,
        version=digest or digest_of(data),
        digest=digest or digest_of(data),
        size=len(data) if size is None else size,
        architecture=architecture,
        key_id=key.key_id,
        issued_at=format_time(ISSUED),
    )
    return sign_release(record, key)


def offer_for(
    data: bytes,
    key: SigningKey,
    *,
    role: str = "canary",
    rollout: str = "default/demo",
    revision: int = 1,
    architecture: str = "logistic",
) -> ModelOffer:
    """The assignment of `data`'s version, with its release signed by `key`, as the gateway hands it out."""
    signed = signed_release(data, key, rollout=rollout, revision=revision, architecture=architecture)
    return ModelOffer(signed.record.version, role, rollout, revision, signed)


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function on a fresh event loop (pytest sees the wrapped function's fixtures)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class FleetHarness:
    """A real fleet gateway (in process, or the core of a gRPC gateway app) with a real artifact store on disk, and
    an operator's hand on it: publish artifacts, sign their releases, and publish views of one rollout."""

    def __init__(self, gateway: Any, store: Any, key: SigningKey, *, fleet: str = "default") -> None:
        self.gateway = gateway
        self.registry = gateway.metrics.registry
        self.store = store
        self.key = key
        self.fleet = fleet
        self.generation = 0
        self.releases: dict[str, SignedRelease] = {}

    @classmethod
    def in_process(
        cls,
        root: Path,
        key: SigningKey,
        *,
        fleet: str = "default",
        check_in_seconds: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> FleetHarness:
        from prometheus_client import CollectorRegistry

        from fedfleet.gateway.core import Gateway, GatewaySettings
        from fedfleet.gateway.fleet_state import FleetStates
        from fedfleet.gateway.metrics import GatewayMetrics
        from fedfleet.persist.artifact_store import ArtifactStore

        store = ArtifactStore(root / "artifacts")
        settings = GatewaySettings(check_in_interval_seconds=check_in_seconds, health_report_min_interval_seconds=0.0)
        extra = {} if clock is None else {"clock": clock}
        gateway = Gateway(
            FleetStates(root / "state", [fleet]),
            store,
            GatewayMetrics(CollectorRegistry()),
            settings,
            root / "incoming",
            **extra,
        )
        return cls(gateway, store, key, fleet=fleet)

    def publish(self, data: bytes, *, architecture: str = "logistic") -> str:
        digest: str = self.store.put(data)
        self.releases[digest] = signed_release(data, self.key, architecture=architecture)
        return digest

    def tamper(self, digest: str) -> None:
        """Change one byte of the stored artifact after it was signed (an attacker on the gateway's volume)."""
        path = self.store.root / "sha256" / digest.removeprefix("sha256:")
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x01
        path.chmod(0o600)
        path.write_bytes(bytes(data))

    def set_view(
        self,
        *,
        stable: str | None,
        candidate: str | None = None,
        weight: float = 0.0,
        rollout: str = "demo",
        revision: int = 1,
        selector: dict[str, Any] | None = None,
    ) -> int:
        """Publish the fleet's view with one rollout (or none when there is no candidate and no rollout)."""
        from fedfleet.gateway.releases import SignedParts

        self.generation += 1
        rollouts = []
        if candidate is not None or weight:
            rollouts.append(
                {
                    "name": rollout,
                    "salt": f"{rollout}-salt",
                    "revision": revision,
                    "stable": stable,
                    "candidate": candidate,
                    "weight": weight,
                    "selector": selector or {},
                    "control": False,
                }
            )
        view = {"format": 1, "fleet": self.fleet, "stable": stable, "generation": self.generation, "rollouts": rollouts}
        named = {v for v in (stable, candidate) if v}
        parts = {
            v: SignedParts(self.releases[v].record.canonical_bytes(), self.releases[v].signature, self.key.key_id)
            for v in named
        }
        generation, _ = self.gateway.put_fleet_view(self.fleet, json.dumps(view).encode(), parts)
        return generation

"""What the in-process gRPC integration tests share: an aggregator on loopback with TLS and fast timing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedfleet.aggregator.app import AggregatorApp, Security
from fedfleet.api.aggregator_config import AggregatorConfig, AuthSection, Endpoint, TlsSection
from fedfleet.sim.network_fleet import FleetSettings

#: Wall seconds per job second: a job's 60 s deadline becomes 1.2 s.
TIME_SCALE = 0.02


def loopback_aggregator_config(job: str, state: Path, **overrides: Any) -> AggregatorConfig:
    """An aggregator on 127.0.0.1 (free ports) that generates its TLS files and token key under `state`."""
    settings: dict[str, Any] = {
        "job": job,
        "listen": Endpoint(host="127.0.0.1", port=0),
        "http": Endpoint(host="127.0.0.1", port=0),
        "tls": TlsSection(
            cert=state / "tls/server.crt", key=state / "tls/server.key", ca=state / "tls/ca.crt", generate=True
        ),
        "auth": AuthSection(token_key=state / "token.key", generate=True),
        "state_dir": state,
        "time_scale": TIME_SCALE,
        "settle_seconds": 0.5,
        "poll_seconds": 2.0,
        "linger_seconds": 3.0,
    }
    settings.update(overrides)
    return AggregatorConfig(**settings)


def fleet_settings(app: AggregatorApp, security: Security, give_up_after: float = 20.0) -> FleetSettings:
    """The simulated fleet of a test, aimed at `app` on loopback and running at the tests' time scale."""
    return FleetSettings(
        target=f"127.0.0.1:{app.grpc_port}",
        token_key=security.token_key,
        ca_pem=security.ca_pem,
        time_scale=TIME_SCALE,
        give_up_after=give_up_after,
    )


def tail_accuracy(accuracies: list[float | None], rounds: int = 3) -> float:
    """Mean accuracy of the last `rounds` rounds. One round's accuracy swings by several points with who
    happened to report in time, so runs are compared on their last few rounds, not on the last one."""
    tail = [a for a in accuracies[-rounds:] if a is not None]
    assert len(tail) == rounds, f"the last {rounds} rounds must all have an accuracy, got {accuracies[-rounds:]}"
    return sum(tail) / rounds

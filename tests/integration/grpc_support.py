"""What the in-process gRPC integration tests share: an aggregator on loopback with TLS and fast timing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedfleet.aggregator.config import AggregatorConfig, AuthSection, Endpoint, TlsSection

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

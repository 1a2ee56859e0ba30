"""What the in-process gRPC integration tests share: an aggregator on loopback with TLS and fast timing.

The aggregator and the simulated fleet run in the test's process on real clocks: the devices' torch training,
key exchange and masking is real work that has to fit into each round's (scaled) deadline. So every wall-clock
figure here is written for an idle machine and stretched by the slowdown measured when the test starts
(`busy_machine.MachineSpeed`): on a loaded machine the rounds get longer in wall time, never shorter in
simulated time, and what the tests assert keeps its meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from busy_machine import MachineSpeed
from fedfleet.aggregator.app import AggregatorApp, Security
from fedfleet.api.aggregator_config import AggregatorConfig, AuthSection, Endpoint, TlsSection
from fedfleet.sim.network_fleet import FleetSettings

#: Wall seconds per job second on an idle machine: a job's 30 s deadline becomes 0.6 s.
IDLE_TIME_SCALE = 0.02


def loopback_aggregator_config(job: str, state: Path, speed: MachineSpeed, **overrides: Any) -> AggregatorConfig:
    """An aggregator on 127.0.0.1 (free ports) that generates its TLS files and token key under `state`, at
    `time_scale(speed)` unless `overrides` say otherwise."""
    settings: dict[str, Any] = {
        "job": job,
        "listen": Endpoint(host="127.0.0.1", port=0),
        "http": Endpoint(host="127.0.0.1", port=0),
        "tls": TlsSection(
            cert=state / "tls/server.crt", key=state / "tls/server.key", ca=state / "tls/ca.crt", generate=True
        ),
        "auth": AuthSection(token_key=state / "token.key", generate=True),
        "state_dir": state,
        "time_scale": time_scale(speed),
        "settle_seconds": 0.5,
        "poll_seconds": 2.0,
        # Long enough for every device to poll once more (poll_seconds) and hear DONE, however slow it is now.
        "linger_seconds": speed.seconds(3.0),
    }
    settings.update(overrides)
    return AggregatorConfig(**settings)


def time_scale(speed: MachineSpeed, idle: float = IDLE_TIME_SCALE) -> float:
    """The time scale of a test's job: `idle` on an idle machine, stretched by the measured slowdown."""
    return speed.time_scale(idle)


def fleet_settings(app: AggregatorApp, security: Security, give_up_after: float = 20.0) -> FleetSettings:
    """The simulated fleet of a test, aimed at `app` on loopback and running at the aggregator's time scale.
    `give_up_after` is wall seconds (stretch it with `MachineSpeed.seconds`)."""
    return FleetSettings(
        target=f"127.0.0.1:{app.grpc_port}",
        token_key=security.token_key,
        ca_pem=security.ca_pem,
        time_scale=app.config.time_scale,
        give_up_after=give_up_after,
    )


def tail_accuracy(accuracies: list[float | None], rounds: int = 3) -> float:
    """Mean accuracy of the last `rounds` rounds. One round's accuracy swings by several points with who
    happened to report in time, so runs are compared on their last few rounds, not on the last one."""
    tail = [a for a in accuracies[-rounds:] if a is not None]
    assert len(tail) == rounds, f"the last {rounds} rounds must all have an accuracy, got {accuracies[-rounds:]}"
    return sum(tail) / rounds

"""The embedded rollout, `fedfleet rollout ROLLOUT.yaml --model MODEL.pt`: a ModelRollout manifest run without a
cluster, in simulated time.

Everything a cluster has is here, in one process: the fleet gateway (`gateway.core.Gateway`, with its
artifact store on disk under `--out`), the controller (`runtime.rollout_controller`, the operator's order and
pure helpers), a fresh Ed25519 fleet key that signs the releases and that every device trusts, and a
simulated fleet (`sim.rollout_fleet.RolloutFleet`: the real device SDK on MNIST's held-out examples, with
attribute mixes and offline windows) reaching the gateway through in-process links.

Time is a `ManualClock` advanced in ticks of `reconcile_seconds`. After each advance the runtime waits until
the fleet has settled (`runtime.settle`: every device did what the new time asked of it), then reconciles
once (measure the due analyses, decide, sign, write the view), waits for the fleet to settle again (devices
switch, verify, activate, report) and records the fleet as the devices report it. Pause durations, analysis
intervals and the progress deadline are simulated seconds, so minutes of rollout take seconds of wall time,
and nothing measured depends on how fast the machine is.

The run ends Healthy (exit 0), aborted/Degraded (exit 1), or still Progressing or Paused after
`max_minutes` of simulated time (exit 3: an inconclusive analysis waits for a person, and nobody is here
to promote it).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from fedfleet.api.modelrollout import ModelRollout
from fedfleet.api.rollout_status import RolloutPhase
from fedfleet.device.artifact_download import DownloadLimits
from fedfleet.gateway.core import Gateway, GatewaySettings
from fedfleet.gateway.fleet_state import FleetStates
from fedfleet.gateway.metrics import GatewayMetrics
from fedfleet.persist.artifact_store import ArtifactStore
from fedfleet.rollout.selector import DeviceSelector
from fedfleet.runtime.rollout_controller import EmbeddedController, Reconciled
from fedfleet.runtime.rollout_display import header_lines, measurement_line, transition_line
from fedfleet.runtime.rollout_inputs import RolloutInputs
from fedfleet.runtime.rollout_timeline import (
    CANDIDATE,
    STABLE,
    DeviceCount,
    MeasurementLine,
    Point,
    Timeline,
    Transition,
    accuracy_by_version,
    count_devices,
)
from fedfleet.runtime.settle import settle
from fedfleet.security.signing import SigningKey, TrustedKeys
from fedfleet.sim.clock import ManualClock
from fedfleet.sim.rollout_devices import MAX_DEVICES, OfflineWindows, RolloutFleetSpec
from fedfleet.sim.rollout_fleet import RolloutFleet
from fedfleet.sim.rollout_links import in_process_links

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_STUCK = 0, 1, 3
#: Marks a directory as the embedded gateway's volume, so a later run may replace it and nothing else.
GATEWAY_MARKER = ".fedfleet-rollout-gateway"
#: Bytes per publish chunk: the artifact reaches the gateway as a stream, as it would over gRPC.
PUBLISH_CHUNK_BYTES = 1 << 20
#: A device's download limits here. A call's time limit is in wall seconds and includes the wait for one of the
#: fleet's download slots: with hundreds of devices switching at once on a slow machine, the default minute
#: could run out in the queue and make the rollout depend on the machine's speed. In process no stream can
#: stall, so the limit only has to be finite.
IN_PROCESS_DOWNLOADS = DownloadLimits(call_seconds=24 * 3600.0)


@dataclass(frozen=True)
class RolloutSettings:
    """The simulated fleet and time of an embedded rollout (simulated seconds throughout)."""

    devices: int = 500
    seed: int = 0
    max_minutes: float = 30.0
    #: How often the controller reconciles: the operator's per-rollout timer.
    reconcile_seconds: float = 5.0
    #: How often devices check in; each check-in after a view change brings a report on the new generation.
    check_in_seconds: float = 15.0
    #: Devices report health again at their first check-in of each such period, so every analysis interval
    #: hears from them even when their assignment stays the same.
    report_every_seconds: float = 30.0
    #: Held-out examples per device: enough that a handful of canary devices give a stable accuracy figure.
    holdout_examples: int = 16
    #: A tenth of the fleet goes away once for a while during the first five minutes.
    offline: OfflineWindows = field(
        default_factory=lambda: OfflineWindows(fraction=0.1, start_within=300.0, mean_seconds=90.0, min_seconds=10.0)
    )
    #: Devices that never report health (they still follow their assignment).
    silent_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= MAX_DEVICES:
            raise ValueError(f"--devices: must be in 1..{MAX_DEVICES}, got {self.devices}")
        if not 0 < self.max_minutes <= 7 * 24 * 60:
            raise ValueError(f"--max-minutes: must be in (0, {7 * 24 * 60}] simulated minutes, got {self.max_minutes}")
        for name in ("reconcile_seconds", "check_in_seconds", "report_every_seconds"):
            if not getattr(self, name) >= 1.0:
                raise ValueError(f"{name}: must be at least 1 simulated second, got {getattr(self, name)}")

    def fleet_spec(self) -> RolloutFleetSpec:
        return RolloutFleetSpec(
            devices=self.devices,
            seed=self.seed,
            holdout_examples=self.holdout_examples,
            offline=self.offline,
            silent_fraction=self.silent_fraction,
        )


@dataclass(frozen=True)
class RolloutOutcome:
    exit_code: int  # EXIT_HEALTHY, EXIT_DEGRADED or EXIT_STUCK
    phase: RolloutPhase
    reason: str
    message: str
    simulated_seconds: float
    wall_seconds: float
    devices: DeviceCount  # at the end


class EmbeddedRollout:
    """One ModelRollout run in process. `run()` does it all; tests drive it tick by tick (`start`, `tick`,
    `reconcile`, `settle`) and look at the fleet and the gateway in between."""

    def __init__(
        self,
        rollout: ModelRollout,
        inputs: RolloutInputs,
        out: Path,
        settings: RolloutSettings | None = None,
        *,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.rollout = rollout
        self.inputs = inputs
        self.settings = settings or RolloutSettings()
        self.on_line = on_line or (lambda line: None)
        self.clock = ManualClock()
        # Epoch seconds when the rollout starts: the step machine and the release records read calendar times.
        self.epoch = float(int(time.time()))
        self.key = SigningKey.generate()
        fleet = rollout.spec.fleet
        volume = _fresh_volume(out / "gateway")
        self.store = ArtifactStore(volume / "artifacts")
        self.gateway = Gateway(
            FleetStates(volume / "state", [fleet]),
            self.store,
            GatewayMetrics(CollectorRegistry()),
            GatewaySettings(check_in_interval_seconds=self.settings.check_in_seconds),
            volume / "incoming",
            clock=self.clock.now,
        )
        self.gateway.restored()
        seed = self.settings.seed
        uid = f"fedfleet-rollout/{rollout.metadata.namespace or 'default'}/{rollout.metadata.name}/{seed}"
        self.controller = EmbeddedController(rollout, self.gateway, self.key, inputs.candidate.candidate, uid)
        self.fleet = RolloutFleet(
            self.settings.fleet_spec(),
            inputs.holdout,
            in_process_links(self.gateway, fleet),
            TrustedKeys([self.key.public()]),
            clock=self.clock,
            limits=IN_PROCESS_DOWNLOADS,
            report_every_seconds=self.settings.report_every_seconds,
            join_within_seconds=self.settings.check_in_seconds,
        )
        self.selector = DeviceSelector.from_dict(
            rollout.spec.selector.model_dump(mode="json", by_alias=True, exclude_none=True), "spec.selector"
        )
        self.timeline = Timeline()
        self._labels = {inputs.candidate.digest: CANDIDATE, inputs.stable.digest: STABLE}
        self._stop = asyncio.Event()
        self._fleet_task: asyncio.Task[object] | None = None
        self._started_wall: float | None = None
        self._t0 = 0.0  # simulated time when the rollout starts: once every device has joined

    # --- time ----------------------------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Simulated seconds since the rollout started."""
        return self.clock.now() - self._t0

    def now(self) -> float:
        return self.epoch + self.elapsed

    @property
    def finished(self) -> bool:
        phase = self.controller.state.phase
        terminal = self.controller.state.revision > 0 and phase in (RolloutPhase.HEALTHY, RolloutPhase.DEGRADED)
        return terminal or self.elapsed >= self.settings.max_minutes * 60

    # --- the steps of a run --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Publish both models, let the fleet join over one check-in interval and settle on the stable version;
        the rollout's time starts then."""
        self._started_wall = time.monotonic()
        for model in (self.inputs.candidate, self.inputs.stable):
            await self.gateway.publish(_chunks(model.data), model.digest, len(model.data))
        self.controller.start_fleet(self.inputs.stable.candidate, self.epoch)
        self._fleet_task = asyncio.create_task(self.fleet.run(self._stop))
        await self.settle()
        await self.clock.advance(self.settings.check_in_seconds)
        await self.settle()
        self._t0 = self.clock.now()

    def reconcile(self) -> Reconciled:
        """One pass of the controller now. Synchronous: no device acts between the decision and its view."""
        return self.controller.reconcile(self.now())

    async def settle(self) -> None:
        await settle()

    async def tick(self, advance: bool = True) -> Reconciled:
        """Advance simulated time by one reconcile period (unless `advance` is False), reconcile, let the
        fleet carry it out, and record what the devices run."""
        if advance:
            await self.clock.advance(self.settings.reconcile_seconds)
            await self.settle()
        measured_on = self.devices()
        reconciled = self.reconcile()
        await self.settle()
        self.record(reconciled, measured_on)
        return reconciled

    async def run(self) -> RolloutOutcome:
        """The whole rollout: start, reconcile at once, then tick until it ends or time runs out."""
        try:
            await self.start()
            for line in self._header():
                self.on_line(line)
            await self.tick(advance=False)
            while not self.finished:
                await self.tick()
            return self.outcome()
        finally:
            await self.close()

    async def close(self) -> None:
        self._stop.set()
        self.gateway.close()
        if self._fleet_task is not None:
            await self._fleet_task
            self._fleet_task = None

    # --- what happened -------------------------------------------------------------------------------------

    def devices(self) -> DeviceCount:
        return count_devices(self.fleet, self.inputs.candidate.digest, self.inputs.stable.digest, self.selector)

    def record(self, reconciled: Reconciled, measured_on: DeviceCount | None = None) -> None:
        """Add the fleet as it is now, and the reconciliation's measurements (taken while the fleet was as
        `measured_on` counts it) and transitions, to the timeline and the display."""
        state = self.controller.state
        devices = self.devices()
        t = self.elapsed
        health = self.gateway.summary(self.rollout.spec.fleet).health
        accuracy = accuracy_by_version(health, self._labels)
        self.timeline.points.append(Point(t, state.phase.value, state.step_index, state.weight, devices, accuracy))
        for taken in reconciled.measured:
            m = taken.measurement
            line = MeasurementLine(
                t,
                taken.metric,
                taken.background,
                m.phase.value,
                taken.run_phase.value,
                m.value,
                m.baseline,
                m.devices,
                m.message,
                measured_on or devices,
            )
            self.timeline.measurements.append(line)
            self.on_line(measurement_line(line))
        for event in reconciled.decision.events:
            transition = Transition(t, event.type, event.reason, event.message, state.weight, devices)
            self.timeline.transitions.append(transition)
            self.on_line(transition_line(transition))

    def outcome(self) -> RolloutOutcome:
        state = self.controller.state
        if state.phase == RolloutPhase.HEALTHY:
            code = EXIT_HEALTHY
        elif state.phase == RolloutPhase.DEGRADED:
            code = EXIT_DEGRADED
        else:
            code = EXIT_STUCK
        wall = time.monotonic() - self._started_wall if self._started_wall is not None else 0.0
        return RolloutOutcome(code, state.phase, state.reason, state.message, self.elapsed, wall, self.devices())

    def _header(self) -> list[str]:
        return header_lines(
            self.rollout.metadata.name,
            f"{self.inputs.candidate.digest}  from {self.inputs.candidate.source}",
            f"{self.inputs.stable.digest}  {self.inputs.stable.source}",
            self.settings.devices,
            self.key.key_id,
            len(self.rollout.spec.steps),
            self.inputs.notes,
        )


def _fresh_volume(path: Path) -> Path:
    """The embedded gateway's volume, empty: an earlier run's (marked) is replaced; anything else is refused."""
    if path.exists():
        if not (path / GATEWAY_MARKER).is_file():
            raise ValueError(f"--out: {path} exists and is not the gateway volume of an earlier `fedfleet rollout`")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / GATEWAY_MARKER).write_text("the embedded fleet gateway's volume; replaced by the next run\n")
    return path


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), PUBLISH_CHUNK_BYTES):
        yield data[offset : offset + PUBLISH_CHUNK_BYTES]

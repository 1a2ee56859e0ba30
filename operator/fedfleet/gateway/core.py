"""The fleet gateway without its transport: the state, the artifact store, the metrics and the open watches,
behind plain methods. The gRPC servicers (service.py) wrap it; the embedded runtime calls it directly.

Every method checks what it is given where it enters and refuses with a GatewayError carrying the protocol's
reason; every refusal is counted by method and reason, and a refused health report never reaches the
figures the rollout gate reads. A device's assignment is computed from the fleet's view, its id and its
attributes each time it is asked for — nothing about a device is needed from before, so any replica, or a
restarted gateway, answers the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedfleet.models.artifact import is_digest
from fedfleet.persist.artifact_store import ArtifactStore, ArtifactStoreError
from fedfleet.proto.refusals import Refusal
from fedfleet.rollout.assignment import FleetView, assign

from .errors import GatewayError
from .fleet_state import FleetSnapshot, FleetStates, versions_of
from .health_stats import GenerationHealth, VersionHealth
from .inputs import (
    ActivationFailure,
    AttributeLimits,
    HealthReport,
    check_app_version,
    check_attributes,
    check_health,
    check_version,
)
from .metrics import OUTCOME_ACTIVATION_FAILURE, OUTCOME_OK, OUTCOME_REFUSED, GatewayMetrics
from .presence import Presence
from .publishing import publish_stream
from .releases import Release, ReleaseError, SignedParts, parse_release
from .throttle import ReportThrottle
from .watchers import DeviceAssignment, Watch, WatchClosed, WatchRegistry

#: Devices count as present for this many check-in intervals: slack for their timers and a slow network.
PRESENCE_SLACK = 1.25
#: Metric labels for versions that are not digests of the fleet's view.
NO_VERSION = "none"
OTHER_VERSION = "other"


@dataclass(frozen=True)
class GatewaySettings:
    check_in_interval_seconds: float = 60.0
    keepalive_seconds: float = 30.0
    attributes: AttributeLimits = field(default_factory=AttributeLimits)
    max_artifact_bytes: int = 256 << 20
    max_view_bytes: int = 1 << 20
    max_releases: int = 64
    download_chunk_bytes: int = 256 << 10
    max_watch_streams: int = 20_000
    max_watch_streams_per_device: int = 2
    max_tracked_devices: int = 200_000
    health_report_min_interval_seconds: float = 5.0
    max_concurrent_publishes: int = 2


@dataclass(frozen=True)
class FleetSummary:
    fleet: str
    generation: int  # 0 before the first view
    devices: dict[tuple[str, str], int]  # (version, role) -> devices heard from within the check-in window
    health: list[VersionHealth]
    check_in_interval_seconds: float


class Gateway:
    def __init__(
        self,
        states: FleetStates,
        store: ArtifactStore,
        metrics: GatewayMetrics,
        settings: GatewaySettings,
        spool_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.states = states
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self._spool_dir = spool_dir
        window = settings.check_in_interval_seconds * PRESENCE_SLACK
        self.presence = Presence(window, settings.max_tracked_devices, clock)
        self._throttle = ReportThrottle(
            settings.health_report_min_interval_seconds, settings.max_tracked_devices, clock
        )
        self._health = {f: GenerationHealth(settings.max_tracked_devices) for f in states.fleets}
        self.watchers = WatchRegistry(
            settings.max_watch_streams, settings.max_watch_streams_per_device, metrics.watch_streams.set
        )
        self._publishing = asyncio.Semaphore(settings.max_concurrent_publishes)
        metrics.track(self._device_counts, self._reporting_counts)

    def restored(self) -> None:
        """After the states were loaded: health figures start with the generation each fleet holds."""
        for fleet, health in self._health.items():
            snapshot = self.states.get(fleet)
            health.reset(snapshot.generation if snapshot is not None else 0)

    # ---- devices ----------------------------------------------------------------------------------------

    def check_in(
        self,
        fleet: str,
        device_id: str,
        attributes: Mapping[str, str],
        current_version: str = "",
        app_version: str = "",
    ) -> DeviceAssignment:
        with self._counting("CheckIn"):
            attrs = check_attributes(attributes, self.settings.attributes)
            check_version(current_version, "current_version", required=False)
            check_app_version(app_version)
            snapshot = self._snapshot(fleet)
            answer = self._assign(snapshot, device_id, attrs)
        self.metrics.checkins.labels(fleet).inc()
        self.presence.seen(fleet, device_id, version_label(snapshot, current_version), answer.assignment.role)
        return answer

    def assignment_for(self, fleet: str, device_id: str, attributes: Mapping[str, str]) -> DeviceAssignment:
        with self._counting("GetAssignment"):
            attrs = check_attributes(attributes, self.settings.attributes)
            return self._assign(self._snapshot(fleet), device_id, attrs)

    def open_watch(self, fleet: str, device_id: str, attributes: Mapping[str, str]) -> Watch:
        """A stream of this device's assignment: the current one first. Close it with `close_watch`."""
        with self._counting("WatchAssignment"):
            attrs = check_attributes(attributes, self.settings.attributes)
            first = self._assign(self._snapshot(fleet), device_id, attrs)
            return self.watchers.open(fleet, device_id, attrs, first)

    def close_watch(self, watch: Watch) -> None:
        self.watchers.close(watch)

    async def subscribe(
        self, fleet: str, device_id: str, attributes: Mapping[str, str]
    ) -> AsyncIterator[DeviceAssignment]:
        """The current assignment, then each change of it, until the gateway closes (the in-process watch)."""
        watch = self.open_watch(fleet, device_id, attributes)
        try:
            while True:
                item = await watch.next(None)
                if item is not None:
                    yield item
        except WatchClosed:
            return
        finally:
            self.close_watch(watch)

    def download(self, fleet: str, digest: str, offset: int) -> tuple[int, Iterator[tuple[int, bytes]]]:
        """The artifact's size and its (offset, bytes) chunks from `offset` on. Only versions the fleet's view
        names are served: an artifact of another fleet does not exist for this one."""
        with self._counting("DownloadArtifact"):
            snapshot = self._snapshot(fleet)
            if digest not in snapshot.versions or not self.store.has(digest):
                raise GatewayError(Refusal.UNKNOWN_ARTIFACT, f"digest: no artifact {digest[:80]!r} for this fleet")
            size = self.store.size(digest)
            if not 0 <= offset <= size:
                raise GatewayError(
                    Refusal.OFFSET_OUT_OF_RANGE, f"offset: must be within [0, {size}] (the artifact's size)"
                )
        return size, self._chunks(digest, offset, size)

    def _chunks(self, digest: str, offset: int, size: int) -> Iterator[tuple[int, bytes]]:
        step = self.settings.download_chunk_bytes
        while offset < size:
            try:
                data = self.store.read_chunk(digest, offset, min(step, size - offset))
            except ArtifactStoreError as exc:  # removed from the volume under a running download
                raise GatewayError(Refusal.UNKNOWN_ARTIFACT, str(exc)) from None
            if not data:
                return
            yield offset, data
            offset += len(data)

    def report_health(self, fleet: str, device_id: str, attributes: Mapping[str, str], report: HealthReport) -> None:
        snapshot = self.states.get(fleet)
        label = version_label(snapshot, report.version) if snapshot is not None else OTHER_VERSION
        try:
            attrs = check_attributes(attributes, self.settings.attributes)
            snapshot = self._snapshot(fleet)
            check_health(report)
            answer = self._assign(snapshot, device_id, attrs)
            if report.version != answer.assignment.version:
                raise GatewayError(
                    Refusal.NOT_ASSIGNED,
                    f"version: this device is assigned {answer.assignment.version or 'no version'}, "
                    "so it may report only on that",
                )
            wait = self._throttle.wait_left(fleet, device_id, report.version)
            if wait > 0:
                raise GatewayError(
                    Refusal.REPORT_TOO_FREQUENT, f"this device reported on this version; next report in {wait:.0f}s"
                )
        except GatewayError as err:
            if fleet in self.states.fleets:  # a label value only for a fleet served here
                self.metrics.health_reports.labels(fleet, label, OUTCOME_REFUSED).inc()
            self.metrics.refused("ReportModelHealth", err.reason)
            raise
        self._throttle.accepted(fleet, device_id, report.version)
        self._record(fleet, device_id, answer.assignment.role, report)

    def _record(self, fleet: str, device_id: str, role: str, report: HealthReport) -> None:
        m, version, health = self.metrics, report.version, self._health[fleet]
        if report.activation_failure != ActivationFailure.NONE:
            reason = ActivationFailure(report.activation_failure).value
            m.health_reports.labels(fleet, version, OUTCOME_ACTIVATION_FAILURE).inc()
            m.activation_failures.labels(fleet, version, reason).inc()
            health.record_failure(version, role, device_id, reason)
            return
        latency = report.inference_latency_ms / 1000.0
        m.health_reports.labels(fleet, version, OUTCOME_OK).inc()
        m.accuracy.labels(fleet, version).observe(report.accuracy)
        m.loss.labels(fleet, version).observe(report.loss)
        m.latency.labels(fleet, version).observe(latency)
        health.record_active(version, role, device_id, report.accuracy, report.loss, latency)

    # ---- the operator and the aggregators ---------------------------------------------------------------

    async def publish(self, chunks: AsyncIterator[bytes], digest: str, size: int) -> str:
        """Store an artifact of `size` bytes that must hash to `digest`; idempotent."""
        with self._counting("PublishModel"):
            if not is_digest(digest):
                raise GatewayError(Refusal.BAD_REQUEST, "header.digest: must be 'sha256:' followed by 64 lowercase hex")
            if not 0 < size <= self.settings.max_artifact_bytes:
                raise GatewayError(
                    Refusal.PUBLISH_REJECTED, f"header.size: must be within [1, {self.settings.max_artifact_bytes}]"
                )
            async with self._publishing:
                return await publish_stream(self.store, chunks, digest, size, self._spool_dir)

    def put_fleet_view(self, fleet: str, view_json: bytes, releases: Mapping[str, SignedParts]) -> tuple[int, bool]:
        """Make `view_json` the fleet's view; returns the generation held and whether it changed.

        Refused: a fleet not served here, a view that breaks a rule or names another fleet, a generation older
        than the one held (or the held generation with other content), a version the store lacks or that has
        no signed release (given here or held from before)."""
        with self._counting("PutFleetView"):
            if fleet not in self.states.fleets:
                raise GatewayError(Refusal.UNKNOWN_FLEET, f"fleet: {fleet[:80]!r} is not served by this gateway")
            view = self._parse_view(fleet, view_json)
            if len(releases) > self.settings.max_releases:
                raise GatewayError(
                    Refusal.BAD_FLEET_VIEW, f"releases: at most {self.settings.max_releases}, got {len(releases)}"
                )
            held = self.states.get(fleet)
            if held is not None:
                if view.generation < held.generation:
                    raise GatewayError(
                        Refusal.STALE_FLEET_VIEW,
                        f"generation: {view.generation} is older than the generation {held.generation} held",
                    )
                if view.generation == held.generation:
                    if view.to_dict() == held.view.to_dict():
                        return held.generation, False
                    raise GatewayError(
                        Refusal.STALE_FLEET_VIEW,
                        f"generation: {view.generation} is held with another view; a change needs a new generation",
                    )
            needed = {v: self._release_for(v, releases, held) for v in sorted(versions_of(view))}
            snapshot = FleetSnapshot(view, needed)
        self.states.replace(fleet, snapshot)
        self._health[fleet].reset(snapshot.generation)
        self.watchers.recompute(fleet, lambda w: self._assign(snapshot, w.device_id, w.attributes))
        return snapshot.generation, True

    def _parse_view(self, fleet: str, view_json: bytes) -> FleetView:
        if len(view_json) > self.settings.max_view_bytes:
            raise GatewayError(Refusal.BAD_FLEET_VIEW, f"view: more than {self.settings.max_view_bytes} bytes")
        try:
            view = FleetView.from_dict(json.loads(view_json), "view")
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise GatewayError(Refusal.BAD_FLEET_VIEW, str(exc)[:300]) from None
        if view.fleet != fleet:
            raise GatewayError(Refusal.BAD_FLEET_VIEW, f"view.fleet: {view.fleet!r} is not the fleet {fleet!r}")
        return view

    def _release_for(self, version: str, given: Mapping[str, SignedParts], held: FleetSnapshot | None) -> Release:
        if not self.store.has(version):
            raise GatewayError(
                Refusal.ARTIFACT_MISSING, f"view: names {version}, which is not published to this gateway"
            )
        parts = given.get(version)
        if parts is None:
            if held is not None and version in held.releases:
                return held.releases[version]
            raise GatewayError(Refusal.BAD_FLEET_VIEW, f"releases: no signed release for {version}")
        try:
            header = self.store.header(version)
            return parse_release(version, parts, self.store.size(version), header.architecture)
        except (ReleaseError, ArtifactStoreError) as exc:
            raise GatewayError(Refusal.BAD_FLEET_VIEW, str(exc)) from None

    def summary(self, fleet: str) -> FleetSummary:
        with self._counting("GetFleetSummary"):
            if fleet not in self.states.fleets:
                raise GatewayError(Refusal.UNKNOWN_FLEET, f"fleet: {fleet[:80]!r} is not served by this gateway")
        snapshot = self.states.get(fleet)
        counts = self.presence.counts(fleet)
        return FleetSummary(
            fleet=fleet,
            generation=snapshot.generation if snapshot is not None else 0,
            devices={(version, role): n for (_, version, role), n in sorted(counts.items())},
            health=self._health[fleet].summary(),
            check_in_interval_seconds=self.settings.check_in_interval_seconds,
        )

    def close(self) -> None:
        """End every open watch (shutdown): their devices reconnect."""
        self.watchers.close_all()

    # ---- helpers ----------------------------------------------------------------------------------------

    def _snapshot(self, fleet: str) -> FleetSnapshot:
        snapshot = self.states.get(fleet)
        if snapshot is None:
            if fleet not in self.states.fleets:
                raise GatewayError(Refusal.UNKNOWN_FLEET, f"fleet {fleet[:80]!r} is not served by this gateway")
            raise GatewayError(
                Refusal.NO_FLEET_VIEW, f"no model is published for fleet {fleet!r} yet; keep running what you run"
            )
        return snapshot

    def _assign(self, snapshot: FleetSnapshot, device_id: str, attributes: Mapping[str, str]) -> DeviceAssignment:
        assignment = assign(snapshot.view, device_id, attributes)
        version = assignment.version
        return DeviceAssignment(assignment, snapshot.releases.get(version) if version else None, snapshot.generation)

    @contextlib.contextmanager
    def _counting(self, method: str) -> Iterator[None]:
        try:
            yield
        except GatewayError as err:
            if not err.counted:
                self.metrics.refused(method, err.reason)
            raise

    def _device_counts(self) -> Iterable[tuple[tuple[str, str, str], int]]:
        return self.presence.counts().items()

    def _reporting_counts(self) -> Iterable[tuple[tuple[str, str], int]]:
        for fleet, health in sorted(self._health.items()):
            snapshot = self.states.get(fleet)
            named = snapshot.versions if snapshot is not None else frozenset()
            for version in sorted(named | set(health.versions())):
                yield (fleet, version), health.reporting_devices(version)


def version_label(snapshot: FleetSnapshot, version: str) -> str:
    """A `version` metric label: the digest when the fleet's view names it, else "none" or "other"."""
    if not version:
        return NO_VERSION
    return version if version in snapshot.versions else OTHER_VERSION

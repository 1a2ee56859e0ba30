"""The state device calls read and change: who checked in, the open round, the model devices download,
evaluation campaigns and the open secure round.

The round loop (`engine.loop`, through `aggregator.transport`) opens and closes rounds here; the gRPC
servicer turns device calls into the methods below. Everything runs on one asyncio loop, so the engine's
objects are only ever touched from one thread.

Two clocks: job seconds (deadlines, as the spec states them) are wall seconds divided by `time_scale`, so a
simulated fleet can run a job faster than real time; registry freshness and settling use wall seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.engine.round import TrainingRound, UpdateRejected
from fedfleet.engine.server import FederatedServer
from fedfleet.engine.types import Outcome, RejectReason
from fedfleet.privacy.secure_update import plan_encoding
from fedfleet.proto import codec
from fedfleet.proto.refusals import Refusal
from fedfleet.proto.task_kinds import TaskKind
from fedfleet.proto.v1 import aggregator_pb2 as pb

from .campaigns import EvaluationCampaign
from .devices import DeviceRegistry, DeviceState
from .metrics import AggregatorMetrics
from .secure_round import SecureRound, SecureRoundRefused
from .upload import PayloadAssembler, check_declared_size, decode_update, idle_bounded, read_header


@dataclass(frozen=True)
class HubSettings:
    time_scale: float = 1.0  # wall seconds per job second
    min_devices: int | None = None  # candidates needed before a round starts (default: clientsPerRound)
    settle_seconds: float = 2.0  # longest wait, once there are enough, for the others to report availability
    quiet_seconds: float = 0.25  # no new device for this long means the initial wave of check-ins is over
    poll_seconds: float = 10.0
    device_ttl_seconds: float = 60.0
    max_update_bytes: int | None = None  # default: the model in float32
    upload_idle_seconds: float = 30.0  # an upload stream silent for this long is dropped (wall seconds)


@dataclass(frozen=True)
class TaskView:
    kind: TaskKind
    next_round: int
    round: int = 0
    model_version: int = 0
    deadline_seconds: float = 0.0  # wall seconds left
    secure: pb.SecureAggregationTask | None = None  # a TRAIN task whose update goes through secure aggregation


@dataclass(frozen=True)
class ModelSnapshot:
    version: int
    payload: bytes
    sha256: bytes


@dataclass(frozen=True)
class UploadOutcome:
    outcome: Outcome
    round: int
    next_round: int


class DeviceUnknown(Exception):
    """The device has not checked in (or the aggregator restarted since): it must check in first."""


class ModelVersionGone(Exception):
    """The requested model version is not the current one."""


class BadReport(ValueError):
    """An evaluation report with impossible values."""


class DeviceHub:
    def __init__(
        self,
        job_name: str,
        spec: FederatedJobSpec,
        server: FederatedServer,
        layout: codec.Layout,
        metrics: AggregatorMetrics,
        settings: HubSettings = HubSettings(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if codec.layout_size(layout) != server.dim:
            raise ValueError(f"layout holds {codec.layout_size(layout)} values, the model has {server.dim}")
        self.job_name = job_name
        self.spec = spec
        self.server = server
        self.layout = layout
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.registry = DeviceRegistry(settings.device_ttl_seconds)
        self.max_update_bytes = settings.max_update_bytes or server.dim * 4
        self.current: TrainingRound | None = None
        self.previous: TrainingRound | None = None  # the last closed round: it still takes (late) stragglers
        self.secure: SecureRound | None = None  # the open round's secure aggregation, in jobs that use it
        self.uses_secure_aggregation = spec.privacy.secure_aggregation.enabled
        if self.uses_secure_aggregation:
            # Refuse a spec whose rounds could never be encoded before any device connects (ValueError naming it).
            privacy = server.privacy
            noise = privacy.noise_multiplier if privacy is not None else None
            plan_encoding(spec, server.dim, max(2, spec.cohort.invited), 1, noise)
        self.campaign: EvaluationCampaign | None = None
        self.snapshot = self._snapshot()
        self.done = False
        self.serving = False
        self._stopping = asyncio.Event()
        self._tasks_changed = asyncio.Event()  # wakes long-polls: a round or campaign opened or closed
        self._progress = asyncio.Event()  # wakes the round loop: an upload, report or check-in arrived
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-sha256")
        self._open_uploads: set[tuple[str, int]] = set()  # (device, round) of the streams being received
        # Devices this process told the job is done. Only authenticated ids get here, one per device token.
        self._told_done: set[str] = set()

    # ---- what the round loop changes ---------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()
        self.tasks_changed()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop_requested(self) -> bool:
        # A method, not the property: mypy narrows a property across awaits, where it can change.
        return self._stopping.is_set()

    @property
    def next_round(self) -> int:
        return self.server.round + 1

    def open_round(self, training_round: TrainingRound, secure: SecureRound | None) -> None:
        self.current, self.secure = training_round, secure
        self.metrics.round_current.set(training_round.number)
        self.tasks_changed()

    def abandon_round(self) -> None:
        self.current = self.secure = None
        self.tasks_changed()

    def round_closed(self, training_round: TrainingRound) -> None:
        """The server stepped the model: devices may download it, and stragglers go to the closed round."""
        self.previous, self.current, self.secure = training_round, None, None
        self.snapshot = self._snapshot()
        self.tasks_changed()

    def restored(self) -> None:
        """The server was restored from a checkpoint: serve its model; a finished job's is final, and every
        device that asks is told DONE from the start."""
        self.snapshot = self._snapshot()
        self.done = self.server.done

    def finish(self) -> None:
        """The job is over: every device is told DONE from now on."""
        self.done = True
        self.tasks_changed()

    def job_now(self) -> float:
        return self.clock() / self.settings.time_scale

    def wall_left(self, job_deadline: float) -> float:
        return max(0.0, (job_deadline - self.job_now()) * self.settings.time_scale)

    def tasks_changed(self) -> None:
        self._tasks_changed.set()
        self._tasks_changed = asyncio.Event()
        self.progress()

    def progress(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_progress(self, timeout: float) -> None:
        progress = self._progress
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), max(timeout, 0.0))

    # ---- device calls ----------------------------------------------------------------------------------

    def check_in(self, device_id: str, request: pb.CheckInRequest) -> DeviceState:
        now = self.clock()
        caps = request.capabilities
        state = self.registry.check_in(
            device_id,
            consent=request.consent,
            train_examples=max(0, caps.train_examples),
            holdout_examples=max(0, caps.holdout_examples),
            now=now,
        )
        self.registry.heard_from(state, request.availability.available, request.availability.for_round, now)
        if self.done:
            self._told_done.add(device_id)  # its CheckInResponse says job_done
        self.progress()
        return state

    async def next_task(self, device_id: str, availability: pb.Availability, wait_seconds: float) -> TaskView:
        state = self.registry.get(device_id)
        if state is None and self.done:
            # A device back after the end, perhaps after a restart of this aggregator that forgot it: the
            # answer is DONE, not "check in first" — there is nothing left to check in for.
            self._told_done.add(device_id)
            return TaskView(TaskKind.DONE, self.next_round)
        if state is None:
            raise DeviceUnknown(f"device {device_id} has not checked in; call CheckIn first")
        end = self.clock() + min(max(wait_seconds, 0.0), self.settings.poll_seconds)
        self.registry.heard_from(state, availability.available, availability.for_round, self.clock())
        self.progress()
        state.polling += 1
        try:
            while True:
                task = self._task_for(state)
                stale = state.for_round not in (0, self.next_round)
                remaining = end - self.clock()
                if task.kind != TaskKind.WAIT or stale or remaining <= 0 or self.stopping:
                    return task
                changed = self._tasks_changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            state.polling -= 1
            state.last_seen = self.clock()

    def model(self, version: int) -> ModelSnapshot:
        snapshot = self.snapshot
        if version != snapshot.version:
            raise ModelVersionGone(
                f"model version {version} is not available; the current version is {snapshot.version}"
            )
        return snapshot

    async def upload(self, device_id: str, chunks: AsyncIterator[pb.UpdateChunk]) -> UploadOutcome:
        """Receive one chunked update and fold it into its round. Raises UpdateRejected (counted by reason)."""
        try:
            header = read_header(await anext(chunks, None))
            if self.uses_secure_aggregation:
                raise UpdateRejected(
                    RejectReason.SECURE_ONLY,
                    "this job runs secure aggregation: send the update as a masked input (UploadMaskedInput)",
                )
            key = (device_id, header.round)
            if key in self._open_uploads:
                # One stream per device and round: more would only multiply what one device holds open.
                raise UpdateRejected(
                    RejectReason.BUSY, f"an upload for round {header.round} from {device_id} is still open"
                )
            target = self._admit(device_id, header.round)
        except UpdateRejected as rejection:
            self._count_rejection(rejection.reason)
            raise
        assembler: PayloadAssembler | None = None
        self._open_uploads.add(key)
        try:
            check_declared_size(header, self.max_update_bytes)
            assembler = PayloadAssembler(header.total_bytes, self.hasher)
            async for chunk in idle_bounded(chunks, self.settings.upload_idle_seconds):
                self.metrics.bytes_received.inc(assembler.add(chunk))
            update = decode_update(device_id, header, await assembler.finish(), self.layout)
        except UpdateRejected as rejection:
            if assembler is not None:
                await assembler.abandon()
            target.reject(device_id, rejection)
            self._count_rejection(rejection.reason)
            raise
        finally:
            self._open_uploads.discard(key)
        try:
            outcome = target.submit(update, now=self.job_now())
        except UpdateRejected as rejection:
            self._count_rejection(rejection.reason)
            raise
        self._free(device_id)
        return UploadOutcome(outcome, target.number, self.next_round)

    def secure_round(self, round_number: int) -> SecureRound:
        """The open secure-aggregation round a device's stage message is for. Raises SecureRoundRefused."""
        secure = self.secure
        if secure is None:
            raise SecureRoundRefused(
                Refusal.WRONG_ROUND if self.uses_secure_aggregation else Refusal.SECAGG_OFF,
                f"no secure-aggregation round is open (message for round {round_number}, next is {self.next_round})"
                if self.uses_secure_aggregation
                else "this job does not run secure aggregation",
            )
        return secure

    def secure_input_done(self, device_id: str) -> None:
        """A device's masked input is in: it is free again, as after a plaintext upload."""
        self._free(device_id)

    def report_evaluation(self, device_id: str, report: pb.EvaluationReport) -> bool:
        if report.num_examples < 1 or not 0.0 <= report.accuracy <= 1.0 or not math.isfinite(report.loss):
            raise BadReport(
                "an evaluation needs num_examples >= 1, accuracy in [0, 1] and a finite loss; "
                f"got {report.num_examples}, {report.accuracy}, {report.loss}"
            )
        state = self.registry.get(device_id)
        if state is not None:
            state.busy_round = 0
        campaign = self.campaign
        if campaign is None or not campaign.accept(device_id, report):
            return False
        self.progress()
        return True

    @property
    def open_uploads(self) -> int:
        """Upload streams being received now."""
        return len(self._open_uploads)

    def all_told_done(self) -> bool:
        """Every device that checked in since this process started has been told the job is done."""
        return all(d.device_id in self._told_done for d in self.registry.all())

    @property
    def told_done(self) -> int:
        """Devices this process has told the job is done."""
        return len(self._told_done)

    # ---- internals -------------------------------------------------------------------------------------

    def _free(self, device_id: str) -> None:
        state = self.registry.get(device_id)
        if state is not None:
            state.busy_round = 0
            state.last_seen = self.clock()
        self.progress()

    def _snapshot(self) -> ModelSnapshot:
        payload = bytes(codec.encode_vector(self.server.weights))  # a copy: later rounds change the weights
        return ModelSnapshot(self.server.round, payload, codec.sha256(payload))

    def _task_for(self, state: DeviceState) -> TaskView:
        if self.done:
            self._told_done.add(state.device_id)
            return TaskView(TaskKind.DONE, self.next_round)
        if not state.consent:
            return TaskView(TaskKind.WAIT, self.next_round)
        current, secure = self.current, self.secure
        if (
            current is not None
            and state.device_id in current.config.cohort
            and state.device_id in current.pending()
            and (secure is None or secure.may_start(state.device_id))
        ):
            state.busy_round = current.number
            return TaskView(
                TaskKind.TRAIN,
                self.next_round,
                round=current.number,
                model_version=self.snapshot.version,
                deadline_seconds=self.wall_left(current.config.deadline),
                secure=secure.task_for(state.device_id) if secure is not None else None,
            )
        campaign = self.campaign
        if campaign is not None and campaign.wants(state.device_id):
            state.busy_round = campaign.version
            return TaskView(
                TaskKind.EVALUATE,
                self.next_round,
                round=campaign.version,
                model_version=campaign.version,
                deadline_seconds=self.wall_left(campaign.deadline),
            )
        return TaskView(TaskKind.WAIT, self.next_round)

    def _admit(self, device_id: str, round_number: int) -> TrainingRound:
        """The round an update belongs to; the just-closed one takes its stragglers (they are late)."""
        previous, current = self.previous, self.current
        if previous is not None and round_number == previous.number and device_id in previous.config.cohort:
            target = previous
        elif current is not None and round_number < current.number and device_id not in current.config.cohort:
            # A straggler of a round closed before the last one: nothing to be late for any more.
            raise UpdateRejected(
                RejectReason.ROUND_CLOSED, f"round {round_number} is closed; the current round is {current.number}"
            )
        elif current is not None:
            target = current
        elif self.done:
            raise UpdateRejected(
                RejectReason.ROUND_CLOSED, f"the job is done: round {round_number} is closed and no round will open"
            )
        else:
            raise UpdateRejected(
                RejectReason.WRONG_ROUND,
                f"update is for round {round_number}, but no round is open (the next is {self.next_round})",
            )
        target.admit(device_id, round_number)
        return target

    def _count_rejection(self, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()

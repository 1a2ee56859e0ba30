"""The aggregator's round loop on the wall clock, and the state that device calls read and change.

It drives the transport-agnostic engine: `FederatedServer.start_round` with the devices that checked in,
consent and are available; `TrainingRound.submit` for each upload; `finish_round` when the round is full,
past its deadline, or has no invitee left to hear from. In a job with secure aggregation no upload is ever
submitted alone: a `SecureRound` (secure_round.py) runs the round's four stages and hands the engine only
the aggregate. Everything runs on one asyncio loop, so the engine's objects are only ever touched from one
thread.

Two clocks: job seconds (deadlines, as the spec states them) are wall seconds divided by `time_scale`, so a
simulated fleet can run a job faster than real time; registry freshness and settling use wall seconds.
After each round: server evaluation, optional federated evaluation, then the checkpoint (atomic) and the
metrics.jsonl record — in that order, so a crash at any point resumes from the last checkpointed round and
no round is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.engine.round import TrainingRound, UpdateRejected
from fedfleet.engine.seeding import Purpose, stream
from fedfleet.engine.server import FederatedServer
from fedfleet.engine.types import Outcome, RejectReason, RoundResult
from fedfleet.models.vector import Vector
from fedfleet.persist.checkpoint import load_checkpoint, save_checkpoint
from fedfleet.privacy.secure_update import plan_encoding
from fedfleet.proto import codec
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.runtime.records import (
    Evaluation,
    RoundRecord,
    RunPaths,
    append_record,
    record_from_result,
    truncate_records,
)

from .metrics import AggregatorMetrics
from .registry import DeviceRegistry, DeviceState
from .secure_round import SecureRound, SecureRoundRefused, build_secure_round
from .upload import PayloadAssembler, check_declared_size, decode_update, read_header

if TYPE_CHECKING:  # built by the app for jobs with differential privacy; the DP libraries load only then
    from fedfleet.privacy.job import JobPrivacy

log = logging.getLogger("fedfleet.aggregator")

Evaluator = Callable[[Vector], Evaluation | None]
RoundCallback = Callable[[RoundRecord], None]


@dataclass(frozen=True)
class CoordinatorSettings:
    time_scale: float = 1.0  # wall seconds per job second
    min_devices: int | None = None  # candidates needed before a round starts (default: clientsPerRound)
    settle_seconds: float = 2.0  # longest wait, once there are enough, for the others to report availability
    quiet_seconds: float = 0.25  # no new device for this long means the initial wave of check-ins is over
    poll_seconds: float = 10.0
    device_ttl_seconds: float = 60.0
    max_update_bytes: int | None = None  # default: the model in float32


class TaskKind(StrEnum):
    WAIT = "wait"
    TRAIN = "train"
    EVALUATE = "evaluate"
    DONE = "done"


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


@dataclass
class EvaluationCampaign:
    version: int
    chosen: frozenset[str]
    deadline: float  # job seconds
    reports: dict[str, pb.EvaluationReport] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.reports) == len(self.chosen)


class Coordinator:
    def __init__(
        self,
        job_name: str,
        spec: FederatedJobSpec,
        initial_weights: Vector,
        layout: codec.Layout,
        paths: RunPaths,
        metrics: AggregatorMetrics,
        settings: CoordinatorSettings = CoordinatorSettings(),
        evaluator: Evaluator | None = None,
        clock: Callable[[], float] = time.monotonic,
        privacy: JobPrivacy | None = None,
    ) -> None:
        if codec.layout_size(layout) != initial_weights.shape[0]:
            raise ValueError(
                f"layout holds {codec.layout_size(layout)} values, the model has {initial_weights.shape[0]}"
            )
        self.job_name = job_name
        self.spec = spec
        self.server = FederatedServer(spec, initial_weights, privacy)
        self.layout = layout
        self.paths = paths
        self.metrics = metrics
        self.settings = settings
        self.evaluator = evaluator
        self.clock = clock
        self.registry = DeviceRegistry(settings.device_ttl_seconds)
        self.max_update_bytes = settings.max_update_bytes or self.server.dim * 4
        self.min_devices = settings.min_devices or spec.cohort.clients_per_round
        self.records: list[RoundRecord] = []
        self.current: TrainingRound | None = None
        self.previous: TrainingRound | None = None
        self.secure: SecureRound | None = None  # the open round's secure aggregation, in jobs that use it
        self.uses_secure_aggregation = spec.privacy.secure_aggregation.enabled
        if self.uses_secure_aggregation:
            # Refuse a spec whose rounds could never be encoded before any device connects (ValueError naming it).
            noise = privacy.noise_multiplier if privacy is not None else None
            plan_encoding(spec, self.server.dim, max(2, spec.cohort.invited), 1, noise)
        self.campaign: EvaluationCampaign | None = None
        self.snapshot = self._snapshot()
        self.done = False
        self.stop_reason: str | None = None  # why the job ended before its last round, if it did
        self.serving = False
        self._stopping = asyncio.Event()
        self._tasks_changed = asyncio.Event()  # wakes long-polls: a round or campaign opened or closed
        self._progress = asyncio.Event()  # wakes the round loop: an upload, report or check-in arrived
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-sha256")

    # ---- lifecycle -------------------------------------------------------------------------------------

    def restore(self) -> int:
        """Continue from the checkpoint in the state dir, if any; returns the last finished round."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        ckpt = load_checkpoint(self.paths.checkpoint)
        if ckpt is not None:
            self.server.restore(ckpt)
        # Records past the checkpoint belong to a round that will run again: drop them.
        self.records = truncate_records(self.paths.metrics, self.server.round)
        self.snapshot = self._snapshot()
        self.metrics.seed(self.spec.rounds, self.server.round, self.server.totals.to_json())
        self.done = self.server.done
        return self.server.round

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake_all()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _stop_requested(self) -> bool:
        # A method, not the property: mypy narrows a property across awaits, where it can change.
        return self._stopping.is_set()

    @property
    def next_round(self) -> int:
        return self.server.round + 1

    async def run(self, on_round: RoundCallback | None = None) -> None:
        """Run rounds until the job is done or a stop is requested (then the open round is abandoned
        unless it is already full, and the checkpoint stays at the last finished round)."""
        self.serving = True
        stops = self._privacy_stops()
        while not self.server.done and not self.stopping:
            number = self.next_round
            candidates = await self._gather(number)
            if candidates is None:
                break
            try:
                training_round = self.server.start_round(
                    candidates, now=self._job_now(), max_update_bytes=self.max_update_bytes
                )
            except stops as stop:
                # Refused before the round changed anything: the job ends here, as a success so far.
                self.stop_reason = f"PrivacyBudgetExhausted: {stop}"
                log.info("round %d not started, the job ends: %s", number, stop)
                break
            log.info(
                "round %d: invited %d of %d candidates", number, len(training_round.config.cohort), len(candidates)
            )
            started_wall, started_job = time.perf_counter(), self._job_now()
            self.current = training_round
            self.metrics.round_current.set(number)
            secure = self._start_secure_round(training_round) if self.uses_secure_aggregation else None
            self.secure = secure
            self._tasks_changed_now()
            if secure is not None:
                await secure.run(self._stop_requested)
                finished = secure.result is not None
            else:
                await self._until_closed(training_round)
                finished = training_round.is_full
            if self._stop_requested() and not finished:
                log.info("round %d abandoned on shutdown; resuming will run it again", number)
                self.current = self.secure = None
                self._tasks_changed_now()
                break
            closed_job = self._job_now()
            t0 = time.perf_counter()
            if secure is not None:
                secure.close_training_round()
                self.secure = None
            result = self.server.finish_round(training_round)
            self.metrics.aggregation_seconds.observe(time.perf_counter() - t0)
            self.previous, self.current = training_round, None
            self.snapshot = self._snapshot()
            self._tasks_changed_now()
            evaluation = await self._server_evaluation(number)
            federated = await self._federated_evaluation(number)
            record = self._record(result, training_round, evaluation, federated, closed_job - started_job, started_wall)
            # The checkpoint goes first: a crash between the two writes leaves a record that restore discards.
            await asyncio.to_thread(save_checkpoint, self.paths.checkpoint, self.server.checkpoint())
            append_record(self.paths.metrics, record)
            self.records.append(record)
            self.metrics.round_finished(result, record.wall_seconds, self.server.totals.churn_rate)
            if evaluation is not None:
                self.metrics.model_accuracy.set(evaluation.accuracy)
                self.metrics.model_loss.set(evaluation.loss)
            log.info(
                "round %d: %s, %d aggregated, %d dropped, %d late, %d rejected%s",
                number, "succeeded" if result.succeeded else f"failed ({result.failure})",
                record.participants, record.dropped, record.late, record.rejected,
                f", accuracy {evaluation.accuracy:.4f}" if evaluation else "",
            )  # fmt: skip
            if on_round is not None:
                on_round(record)
        if self.server.done or self.stop_reason is not None:
            self.done = True  # devices are told DONE, as at the last round
            self._tasks_changed_now()

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
        self._progress_now()
        return state

    async def next_task(self, device_id: str, availability: pb.Availability, wait_seconds: float) -> TaskView:
        state = self.registry.get(device_id)
        if state is None:
            raise DeviceUnknown(f"device {device_id} has not checked in; call CheckIn first")
        end = self.clock() + min(max(wait_seconds, 0.0), self.settings.poll_seconds)
        self.registry.heard_from(state, availability.available, availability.for_round, self.clock())
        self._progress_now()
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
            target = self._admit(device_id, header.round)
        except UpdateRejected as rejection:
            self._count_rejection(rejection.reason)
            raise
        assembler: PayloadAssembler | None = None
        try:
            check_declared_size(header, self.max_update_bytes)
            assembler = PayloadAssembler(header.total_bytes, self._hasher)
            async for chunk in chunks:
                self.metrics.bytes_received.inc(assembler.add(chunk))
            update = decode_update(device_id, header, await assembler.finish(), self.layout)
        except UpdateRejected as rejection:
            if assembler is not None:
                await assembler.abandon()
            target.reject(device_id, rejection)
            self._count_rejection(rejection.reason)
            raise
        try:
            outcome = target.submit(update, now=self._job_now())
        except UpdateRejected as rejection:
            self._count_rejection(rejection.reason)
            raise
        state = self.registry.get(device_id)
        if state is not None:
            state.busy_round = 0
            state.last_seen = self.clock()
        self._progress_now()
        return UploadOutcome(outcome, target.number, self.next_round)

    def secure_round(self, round_number: int) -> SecureRound:
        """The open secure-aggregation round a device's stage message is for. Raises SecureRoundRefused."""
        secure = self.secure
        if secure is None:
            raise SecureRoundRefused(
                "wrong_round" if self.uses_secure_aggregation else "secagg_off",
                f"no secure-aggregation round is open (message for round {round_number}, next is {self.next_round})"
                if self.uses_secure_aggregation
                else "this job does not run secure aggregation",
            )
        return secure

    def secure_input_done(self, device_id: str) -> None:
        """A device's masked input is in: it is free again, as after a plaintext upload."""
        state = self.registry.get(device_id)
        if state is not None:
            state.busy_round = 0
            state.last_seen = self.clock()
        self._progress_now()

    def report_evaluation(self, device_id: str, report: pb.EvaluationReport) -> bool:
        if report.num_examples < 1 or not 0.0 <= report.accuracy <= 1.0 or not math.isfinite(report.loss):
            raise BadReport(
                "an evaluation needs num_examples >= 1, accuracy in [0, 1] and a finite loss; "
                f"got {report.num_examples}, {report.accuracy}, {report.loss}"
            )
        campaign = self.campaign
        state = self.registry.get(device_id)
        if state is not None:
            state.busy_round = 0
        if (
            campaign is None
            or device_id not in campaign.chosen
            or device_id in campaign.reports
            or report.model_version != campaign.version
        ):
            return False
        campaign.reports[device_id] = report
        self._progress_now()
        return True

    def all_told_done(self) -> bool:
        """Every device that checked in since this process started has been told the job is done."""
        return all(d.told_done for d in self.registry.all())

    # ---- internals -------------------------------------------------------------------------------------

    def _privacy_stops(self) -> tuple[type[Exception], ...]:
        if self.server.privacy is None:
            return ()
        from fedfleet.privacy.errors import PRIVACY_STOPS

        return PRIVACY_STOPS

    def _start_secure_round(self, training_round: TrainingRound) -> SecureRound:
        examples = {}
        for device in training_round.config.cohort:
            state = self.registry.get(device)
            examples[device] = state.train_examples if state is not None else 0
        privacy = self.server.privacy
        return build_secure_round(
            training_round,
            self.spec,
            examples,
            noise_multiplier=privacy.noise_multiplier if privacy is not None else None,
            deadline_wall_seconds=self.spec.cohort.round_deadline_seconds * self.settings.time_scale,
            wall_left=lambda: self._wall_left(training_round.config.deadline),
            metrics=self.metrics,
            hasher=self._hasher,
        )

    def _job_now(self) -> float:
        return self.clock() / self.settings.time_scale

    def _snapshot(self) -> ModelSnapshot:
        payload = bytes(codec.encode_vector(self.server.weights))  # a copy: later rounds change the weights
        return ModelSnapshot(self.server.round, payload, codec.sha256(payload))

    def _task_for(self, state: DeviceState) -> TaskView:
        if self.done:
            state.told_done = True
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
                deadline_seconds=self._wall_left(current.config.deadline),
                secure=secure.task_for(state.device_id) if secure is not None else None,
            )
        campaign = self.campaign
        if campaign is not None and state.device_id in campaign.chosen and state.device_id not in campaign.reports:
            state.busy_round = campaign.version
            return TaskView(
                TaskKind.EVALUATE,
                self.next_round,
                round=campaign.version,
                model_version=campaign.version,
                deadline_seconds=self._wall_left(campaign.deadline),
            )
        return TaskView(TaskKind.WAIT, self.next_round)

    def _wall_left(self, job_deadline: float) -> float:
        return max(0.0, (job_deadline - self._job_now()) * self.settings.time_scale)

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
        else:
            raise UpdateRejected(
                RejectReason.WRONG_ROUND,
                f"update is for round {round_number}, but no round is open (the next is {self.next_round})",
            )
        target.admit(device_id, round_number)
        return target

    def _count_rejection(self, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()

    async def _gather(self, number: int) -> list[str] | None:
        """Wait until enough devices can be invited and the others had a chance to say whether they can."""
        enough_since: float | None = None
        while not self.stopping:
            now = self.clock()
            candidates = self.registry.candidates(number, now)
            self._observe_devices(candidates, now)
            timeout = 1.0  # re-check now and then: silent devices expire
            if len(candidates) >= self.min_devices:
                enough_since = now if enough_since is None else enough_since
                quiet_left = self.registry.last_new_device_at + self.settings.quiet_seconds - now
                settle_left = enough_since + self.settings.settle_seconds - now
                if (quiet_left <= 0 and self.registry.settled(number, now)) or settle_left <= 0:
                    return candidates
                timeout = min(timeout, settle_left, max(quiet_left, 0.01))
            else:
                enough_since = None
            await self._wait_progress(timeout)
        return None

    def _observe_devices(self, candidates: list[str], now: float) -> None:
        self.metrics.devices_checked_in.set(len(self.registry.connected(now)))
        self.metrics.devices_available.set(len(candidates))

    async def _until_closed(self, training_round: TrainingRound) -> None:
        deadline = training_round.config.deadline
        while not self.stopping:
            now = self._job_now()
            if training_round.is_full or now >= deadline or not training_round.pending():
                return
            await self._wait_progress((deadline - now) * self.settings.time_scale)

    async def _server_evaluation(self, number: int) -> Evaluation | None:
        every = self.spec.evaluation.server_every
        if self.evaluator is None or every == 0 or (number % every != 0 and number != self.spec.rounds):
            return None
        return await asyncio.to_thread(self.evaluator, self.server.weights.copy())

    async def _federated_evaluation(self, number: int) -> Evaluation | None:
        """Chosen devices evaluate the new model on data they never trained on; the server sees only scores."""
        ev = self.spec.evaluation
        if ev.federated_every == 0 or number % ev.federated_every != 0:
            return None
        now = self.clock()
        holders = sorted(
            d.device_id
            for d in self.registry.connected(now)
            if d.consent and d.available and d.busy_round == 0 and d.holdout_examples > 0
        )
        if not holders:
            return None
        rng = stream(self.spec.seed, Purpose.EVALUATION, number)
        picked = rng.choice(len(holders), size=min(ev.federated_clients, len(holders)), replace=False)
        campaign = EvaluationCampaign(
            version=self.snapshot.version,
            chosen=frozenset(holders[i] for i in picked.tolist()),
            deadline=self._job_now() + self.spec.cohort.round_deadline_seconds,
        )
        self.campaign = campaign
        self._tasks_changed_now()
        while not self.stopping and not campaign.complete and self._job_now() < campaign.deadline:
            await self._wait_progress((campaign.deadline - self._job_now()) * self.settings.time_scale)
        self.campaign = None
        self._tasks_changed_now()
        reports = list(campaign.reports.values())
        total = sum(r.num_examples for r in reports)
        if total == 0:
            return None
        loss = sum(r.loss * r.num_examples for r in reports) / total
        accuracy = sum(r.accuracy * r.num_examples for r in reports) / total
        return Evaluation(loss, accuracy, total)

    def _record(
        self,
        result: RoundResult,
        training_round: TrainingRound,
        evaluation: Evaluation | None,
        federated: Evaluation | None,
        job_seconds: float,
        started_wall: float,
    ) -> RoundRecord:
        return record_from_result(
            result,
            invited=len(training_round.config.cohort),
            dim=self.server.dim,
            evaluation=evaluation,
            federated=federated,
            sim_seconds=job_seconds,
            wall_seconds=time.perf_counter() - started_wall,
            epsilon=self.server.epsilon,
        )

    def _tasks_changed_now(self) -> None:
        self._tasks_changed.set()
        self._tasks_changed = asyncio.Event()
        self._progress_now()

    def _progress_now(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _wake_all(self) -> None:
        self._tasks_changed_now()

    async def _wait_progress(self, timeout: float) -> None:
        progress = self._progress
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), max(timeout, 0.0))

"""One secure-aggregation round on the aggregator: the four stages of SecAggServer on the wall clock.

The round's cohort (sorted) gives each invitee its slot 0..n−1. Devices drive the stages with their calls;
each call hands its message to the SecAggServer and waits until that stage closes, then returns the server's
message to that device for the next stage. A stage closes when every device still in the round has sent its
message, or at its deadline: the key stages get a share of the round's deadline each, the masked inputs the
round's deadline itself (devices train in between), unmasking a grace period after it. A stage also closes
early once the round has its target number of masked inputs (the others become dropouts, which secure
aggregation is built to survive).

What the round engine learns: the aggregate of the included devices' updates — never one update — which
`close_training_round` hands to `TrainingRound.close_secure`. How the unmasked sum becomes the aggregate,
and the round's SecAgg+ parameters, are privacy policy: `privacy.secure_policy`.

All stage bookkeeping runs on the event loop; only `finalize` (regenerating every mask, the one heavy step)
runs in a worker thread, after the last stage stopped accepting messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedfleet.engine.round import TrainingRound, UpdateRejected
from fedfleet.engine.types import RejectReason, RoundResult
from fedfleet.privacy.secagg import (
    ClientRejected,
    KeyBroadcast,
    MaskedInput,
    SecAggAborted,
    SecAggResult,
    SecAggServer,
    ShareBundle,
    Stage,
    UnmaskRequest,
)
from fedfleet.privacy.secagg.ring import word_bytes
from fedfleet.privacy.secure_policy import SecureRoundPlan, plan_secure_round
from fedfleet.proto import secagg_wire as wire
from fedfleet.proto.refusals import Refusal
from fedfleet.proto.v1 import aggregator_pb2 as pb

from .metrics import AggregatorMetrics
from .upload import PayloadAssembler

if TYPE_CHECKING:
    from fedfleet.api.federatedjob import FederatedJobSpec

log = logging.getLogger("fedfleet.aggregator")

#: Share of the round's deadline each key stage and the unmasking stage may wait for stragglers, and the
#: least wall time they get whatever the time scale (a network round trip is not simulated time).
STAGE_SHARE = 0.15
MIN_STAGE_WALL_SECONDS = 0.5


class SecureRoundRefused(Exception):
    """A device's secure-aggregation call cannot be served; `reason` is the stable label the SDK branches on."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class StageTimes:
    key_stage: float  # wall seconds each key stage waits at most
    unmask: float  # wall seconds unmasking waits at most after the masked inputs closed

    @classmethod
    def for_deadline(cls, deadline_wall_seconds: float) -> StageTimes:
        share = max(MIN_STAGE_WALL_SECONDS, STAGE_SHARE * deadline_wall_seconds)
        return cls(key_stage=share, unmask=share)


class SecureRound:
    def __init__(
        self,
        training_round: TrainingRound,
        plan: SecureRoundPlan,
        examples: Mapping[str, int],
        *,
        times: StageTimes,
        wall_left: Callable[[], float],
        metrics: AggregatorMetrics,
        hasher: Executor,
    ) -> None:
        self.training_round = training_round
        self.plan = plan
        self.config = config = plan.config
        self.encoding = plan.encoding
        self.examples = examples
        self.times = times
        self.wall_left = wall_left  # wall seconds until the round's deadline
        self.metrics = metrics
        self.hasher = hasher
        self.slots = {device: slot for slot, device in enumerate(training_round.config.cohort)}
        self.devices = training_round.config.cohort
        self.server = SecAggServer(config)
        self.accepting: Stage | None = Stage.ADVERTISE_KEYS  # the stage device messages may go to now
        self.failure: str | None = None
        self.result: SecAggResult | None = None
        self._arrived: dict[Stage, set[int]] = {stage: set() for stage in Stage}
        self._expected: set[int] = set(range(config.num_clients))
        self._replies: dict[Stage, Mapping[int, Any]] = {}
        self._closed = {stage: asyncio.Event() for stage in Stage}
        self._progress = asyncio.Event()
        self._masked_bytes = 0

    # ---- what devices see ------------------------------------------------------------------------------

    @property
    def number(self) -> int:
        return self.training_round.number

    def may_start(self, device_id: str) -> bool:
        """Whether the device should be handed the TRAIN task: invited, and the key stage still waits for it."""
        slot = self.slots.get(device_id)
        return slot is not None and self.accepting is Stage.ADVERTISE_KEYS and slot not in self._arrived[Stage(0)]

    def task_for(self, device_id: str) -> pb.SecureAggregationTask:
        return wire.task_to_proto(self.config, self.slots[device_id], self.encoding, self.times.key_stage)

    async def advertise_keys(self, device_id: str, request: pb.AdvertiseKeysRequest) -> pb.KeyBroadcast:
        slot = self._slot(device_id, request.round)
        self._receive(
            device_id, slot, Stage.ADVERTISE_KEYS, self.server.receive_public_keys, wire.public_keys_from_proto(request)
        )
        reply: KeyBroadcast = await self._reply(Stage.ADVERTISE_KEYS, slot)
        return wire.broadcast_to_proto(reply)

    async def share_keys(self, device_id: str, request: pb.ShareKeysRequest) -> pb.ShareBundle:
        slot = self._slot(device_id, request.round)
        self._receive(
            device_id, slot, Stage.SHARE_KEYS, self.server.receive_share_keys, wire.share_keys_from_proto(request)
        )
        reply: ShareBundle = await self._reply(Stage.SHARE_KEYS, slot)
        return wire.bundle_to_proto(reply)

    async def masked_input(
        self,
        device_id: str,
        chunks: AsyncIterator[pb.MaskedInputChunk],
        on_received: Callable[[str], None] | None = None,
    ) -> pb.UnmaskRequest:
        try:
            first = await anext(chunks, None)
        except UpdateRejected as rejection:  # a first message that does not parse (guarded_handlers)
            self.metrics.rejected.labels(RejectReason.CORRUPT).inc()
            raise SecureRoundRefused(Refusal.CORRUPT, rejection.message) from None
        if first is None or first.WhichOneof("part") != "header":
            raise SecureRoundRefused(Refusal.CORRUPT, "a masked-input stream must start with its header")
        header = first.header
        slot = self._slot(device_id, header.round)
        expected_bytes = self.config.vector_length * word_bytes(self.config.modulus_bits)
        if header.total_bytes != expected_bytes:
            self._drop_malformed(
                device_id, slot, Stage.MASKED_INPUT,
                f"masked input must be {expected_bytes} bytes ({self.config.vector_length} words), "
                f"the header declares {header.total_bytes}",
            )  # fmt: skip
        self._check_accepting(device_id, slot, Stage.MASKED_INPUT, header.total_bytes)
        assembler = PayloadAssembler(header.total_bytes, self.hasher)
        try:
            async for chunk in chunks:
                self.metrics.bytes_received.inc(assembler.add(chunk))
            payload = await assembler.finish()
        except UpdateRejected as rejection:
            # Damaged in transit: counted, but nothing reached the protocol, so the device may send it again.
            await assembler.abandon()
            self.metrics.rejected.labels(RejectReason.CORRUPT).inc()
            raise SecureRoundRefused(Refusal.CORRUPT, rejection.message) from None
        message = MaskedInput(header.round, bytes(payload), tuple(header.complaints))
        self._receive(device_id, slot, Stage.MASKED_INPUT, self.server.receive_masked_input, message)
        self._masked_bytes += len(payload)
        if on_received is not None:
            on_received(device_id)
        reply: UnmaskRequest = await self._reply(Stage.MASKED_INPUT, slot)
        return wire.unmask_request_to_proto(reply)

    async def unmask(self, device_id: str, request: pb.UnmaskResponse) -> None:
        slot = self._slot(device_id, request.round)
        self._receive(
            device_id, slot, Stage.UNMASK, self.server.receive_unmask, wire.unmask_response_from_proto(request)
        )

    # ---- the stage clock -------------------------------------------------------------------------------

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Run the four stages to a result or a failure (kept in `result` / `failure`)."""
        server = self.server
        loop = asyncio.get_running_loop()
        try:
            closes: tuple[tuple[Stage, Callable[[], Mapping[int, Any]]], ...] = (
                (Stage.ADVERTISE_KEYS, server.close_advertise_keys),
                (Stage.SHARE_KEYS, server.close_share_keys),
                (Stage.MASKED_INPUT, server.close_masked_input),
            )
            for stage, close in closes:
                started = time.perf_counter()
                if stage is Stage.MASKED_INPUT:
                    end = loop.time() + self.wall_left()
                    enough = self.training_round.config.target_reports
                else:
                    end = loop.time() + self.times.key_stage
                    enough = len(self._expected)
                await self._collect(stage, end, enough, stopping)
                if stopping():
                    self.failure = "the aggregator is shutting down"
                    return
                self.accepting = None
                replies = close()
                self._publish(stage, replies)
                self.metrics.secagg_stage_seconds.labels(stage.name.lower()).observe(time.perf_counter() - started)
            started = time.perf_counter()
            await self._collect(Stage.UNMASK, loop.time() + self.times.unmask, len(self._expected), stopping)
            self.accepting = None
            self.result = await asyncio.to_thread(server.finalize)
            self.metrics.secagg_stage_seconds.labels("unmask").observe(time.perf_counter() - started)
        except SecAggAborted as aborted:
            self.failure = f"secure aggregation aborted: {aborted}"
            log.info("round %d: %s", self.number, self.failure)
        finally:
            self.accepting = None
            self._count_exclusions()
            self.metrics.secagg_rounds.labels("succeeded" if self.result is not None else "failed").inc()
            for event in self._closed.values():
                event.set()  # no device call waits past the round

    async def _collect(self, stage: Stage, end: float, enough: int, stopping: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        self.accepting = stage
        while not stopping():
            arrived = self._arrived[stage]
            left = end - loop.time()
            if left <= 0 or len(arrived) >= enough or self._expected <= arrived:
                return
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), left)

    def _publish(self, stage: Stage, replies: Mapping[int, Any]) -> None:
        self._replies[stage] = replies
        self._expected = set(replies)
        self._closed[stage].set()

    def _count_exclusions(self) -> None:
        for exclusion in self.server.exclusions.values():
            self.metrics.secagg_excluded.labels(exclusion.stage.name.lower(), exclusion.reason.value).inc()

    # ---- closing the training round ----------------------------------------------------------------------

    def close_training_round(self) -> RoundResult:
        """Hand the decoded aggregate (or the failure) to the round engine."""
        failure = self.failure or "secure aggregation produced no result"
        if self.result is not None:
            included = [self.devices[slot] for slot in sorted(self.result.included)]
            try:
                aggregate = self.plan.aggregate(self.result.total, len(self.result.included))
            except ValueError as exc:
                failure = f"secure aggregation result unusable: {exc}"
            else:
                examples = sum(self.examples.get(d, 0) for d in included)
                return self.training_round.close_secure(aggregate, included, examples, None, self._masked_bytes)
        return self.training_round.close_secure(None, [], 0, failure, self._masked_bytes)

    # ---- helpers ---------------------------------------------------------------------------------------

    def _slot(self, device_id: str, round_number: int) -> int:
        if round_number != self.number:
            raise SecureRoundRefused(
                Refusal.WRONG_ROUND, f"message for round {round_number}, the secure-aggregation round is {self.number}"
            )
        slot = self.slots.get(device_id)
        if slot is None:
            raise SecureRoundRefused(
                Refusal.NOT_IN_COHORT, f"device {device_id} is not in round {self.number}'s cohort"
            )
        return slot

    def _check_accepting(self, device_id: str, slot: int, stage: Stage, nbytes: int = 0) -> None:
        if self.accepting is stage:
            return
        if stage is Stage.MASKED_INPUT and self._closed[stage].is_set() and slot in self._bundled:
            # It trained, but after the masked inputs closed: a straggler, as in a plaintext round.
            self.training_round.report_late(device_id, nbytes)
            raise SecureRoundRefused(Refusal.ROUND_CLOSED, f"round {self.number} no longer takes masked inputs")
        now = "none" if self.accepting is None else self.accepting.name
        raise SecureRoundRefused(
            Refusal.SECAGG_STAGE_CLOSED,
            f"round {self.number}: stage {stage.name} is not accepting messages (open: {now})",
        )

    @property
    def _bundled(self) -> frozenset[int]:
        """Slots that received their neighbours' shares, and so were due to send a masked input."""
        replies = self._replies.get(Stage.SHARE_KEYS)
        return frozenset(replies) if replies is not None else frozenset()

    def _receive(
        self, device_id: str, slot: int, stage: Stage, receive: Callable[[int, Any], None], message: Any
    ) -> None:
        self._check_accepting(device_id, slot, stage)
        try:
            receive(slot, message)
        except ClientRejected as rejected:
            if rejected.dropped:
                self._count_malformed(device_id, str(rejected))
                raise SecureRoundRefused(Refusal.SECAGG_MALFORMED, str(rejected)) from None
            raise SecureRoundRefused(Refusal.SECAGG_EXCLUDED, str(rejected)) from None
        except SecAggAborted as aborted:
            raise SecureRoundRefused(Refusal.SECAGG_ABORTED, f"secure aggregation aborted: {aborted}") from None
        self._arrived[stage].add(slot)
        self._progress.set()
        self._progress = asyncio.Event()

    def _drop_malformed(self, device_id: str, slot: int, stage: Stage, detail: str) -> None:
        """Refuse a message the server cannot even hand to the protocol, dropping its sender like a malformed one."""
        self._check_accepting(device_id, slot, stage)
        with contextlib.suppress(ClientRejected):
            # An empty masked input is malformed to the server too: it excludes the sender for us.
            self.server.receive_masked_input(slot, MaskedInput(self.number, b""))
        self._count_malformed(device_id, detail)
        raise SecureRoundRefused(Refusal.SECAGG_MALFORMED, detail)

    def _count_malformed(self, device_id: str, detail: str) -> None:
        self.training_round.reject(device_id, UpdateRejected(RejectReason.SECAGG_MALFORMED, detail))
        self.metrics.rejected.labels(RejectReason.SECAGG_MALFORMED).inc()

    async def _reply(self, stage: Stage, slot: int) -> Any:
        await self._closed[stage].wait()
        if self.failure is not None and stage not in self._replies:
            raise SecureRoundRefused(Refusal.SECAGG_ABORTED, f"round {self.number}: {self.failure}")
        reply = self._replies.get(stage, {}).get(slot)
        if reply is None:
            gone = self.server.exclusions.get(slot)
            why = f" ({gone.reason.value} at {gone.stage.name})" if gone is not None else ""
            raise SecureRoundRefused(Refusal.SECAGG_EXCLUDED, f"round {self.number}: this device left the round{why}")
        return reply


def build_secure_round(
    training_round: TrainingRound,
    spec: FederatedJobSpec,
    examples: Mapping[str, int],
    *,
    noise_multiplier: float | None,
    deadline_wall_seconds: float,
    wall_left: Callable[[], float],
    metrics: AggregatorMetrics,
    hasher: Executor,
) -> SecureRound:
    """A SecureRound for a freshly started training round. Raises ValueError when the spec cannot run it."""
    round_config = training_round.config
    declared = max((examples.get(d, 0) for d in round_config.cohort), default=0)
    plan = plan_secure_round(
        spec,
        training_round.number,
        len(round_config.cohort),
        round_config.dim,
        declared,
        round_config.min_reports,
        noise_multiplier,
    )
    return SecureRound(
        training_round,
        plan,
        examples,
        times=StageTimes.for_deadline(deadline_wall_seconds),
        wall_left=wall_left,
        metrics=metrics,
        hasher=hasher,
    )

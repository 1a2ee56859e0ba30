"""The device's loop: check in, long-poll for tasks, train or evaluate, upload; reconnect by itself.

A `Trainer` does the local work (fedfleet.device.torch_trainer trains a torch model on local arrays; the
simulated fleet adds heterogeneity and dropouts). The agent owns the protocol: it re-checks-in when the
aggregator no longer knows it (after a restart), backs off with jitter while the aggregator is down, skips
an upload whose deadline has passed, and stops when the job is done — whichever aggregator process says so.

It stops early on two conditions only: the aggregator refused it for good (its token), or the aggregator
answered nothing for the client's whole `give_up_after` (AggregatorUnreachable). A call that ran out of time
or of its task's deadline is not one of them: the device asks for its next task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from fedfleet.models.vector import Vector
from fedfleet.proto import codec
from fedfleet.proto.refusals import Refusal

from .client import AggregatorError, AggregatorUnreachable, Capabilities, DeviceClient, Model, Task
from .retry import Backoff
from .secure import SecureRoundRefusedByDevice, SecureSession, SentRounds, left_round
from .training import EvalResult, LocalResult

log = logging.getLogger("fedfleet.device")

FATAL_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def describe_failure(exc: BaseException, doing: str | None = None) -> str:
    """A device's failure in one line that is never empty: the exception's type, its message (TimeoutError and
    CancelledError usually have none), what caused it, and what the device was doing, e.g.
    "TimeoutError (no message) while downloading model version 3 for round 4".

    What the device was doing comes from the note `DeviceAgent.run` adds to the exception, else from `doing`
    (the agent's `doing`): a task that ended in CancelledError hands a new, bare one to `asyncio.gather`."""
    message = str(exc).strip()
    text = type(exc).__name__ + (f": {message}" if message else " (no message)")
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        cause_message = str(cause).strip()
        text += f" (from {type(cause).__name__}" + (f": {cause_message})" if cause_message else ")")
    notes = [str(note).strip() for note in getattr(exc, "__notes__", ()) if str(note).strip()]
    if not notes and doing:
        notes = [f"while {doing}"]
    return " ".join([text, *notes])


class Trainer(Protocol):
    async def train(self, task: Task, weights: Vector) -> LocalResult | None:
        """The local update for a TRAIN task, or None when the device drops out of the round."""

    async def evaluate(self, task: Task, weights: Vector) -> EvalResult | None:
        """The evaluation on held-out data for an EVALUATE task, or None when there is none."""


@dataclass
class AgentStats:
    trained: int = 0
    accepted: int = 0
    late: int = 0
    skipped_past_deadline: int = 0
    dropped: int = 0
    evaluations: int = 0
    check_ins: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    left_secure_rounds: int = 0  # secure rounds the server went on without this device (or aborted)
    refused_secure_rounds: int = 0  # secure rounds this device refused (bad parameters or messages)
    done: bool = False


class DeviceAgent:
    def __init__(
        self,
        client: DeviceClient,
        trainer: Trainer,
        *,
        consent: bool = True,
        capabilities: Capabilities | None = None,
        availability: Callable[[int], bool] = lambda next_round: True,
        layout: codec.Layout | None = None,
    ) -> None:
        self.client = client
        self.trainer = trainer
        self.consent = consent
        self.capabilities = capabilities or Capabilities()
        self.availability = availability
        self.layout = layout  # the device model's tensor layout; default: the server's
        self.stats = AgentStats()
        self.next_round = 0
        self.poll_seconds = 10.0
        self._model: Model | None = None
        self._backoff = Backoff()
        self._delays = self._backoff.delays()  # grows while calls keep failing; new after each task
        self._sent_secure = SentRounds()
        self.doing = "starting"  # what the agent is doing now, for the note on a failure that ends `run`

    async def run(self, stop: asyncio.Event | None = None) -> AgentStats:
        """Take part until the job is done (or `stop` is set). Raises AggregatorError when refused for good.

        Whatever ends the run with an exception carries a note of what the agent was doing at the time
        (`describe_failure` shows it): a TimeoutError or CancelledError has no message of its own."""
        try:
            return await self._run(stop or asyncio.Event())
        except BaseException as exc:
            exc.add_note(f"while {self.doing}")
            raise

    async def _run(self, stop: asyncio.Event) -> AgentStats:
        await self._check_in()
        while not stop.is_set() and not self.stats.done:
            try:
                self.doing = f"waiting for a task for round {self.next_round}"
                task = await self.client.next_task(
                    available=self.availability(self.next_round),
                    for_round=self.next_round,
                    wait_seconds=self.poll_seconds,
                )
                self.next_round = task.next_round
                self._delays = self._backoff.delays()
                await self._do(task, stop)
            except AggregatorError as err:
                await self._recover(err)
        return self.stats

    async def _check_in(self) -> None:
        self.doing = f"checking in for round {self.next_round}"
        available = self.availability(self.next_round)
        result = await self.client.check_in(
            consent=self.consent, capabilities=self.capabilities, available=available, for_round=self.next_round
        )
        self.stats.check_ins += 1
        self.poll_seconds = result.poll_seconds or self.poll_seconds
        self.stats.done = result.job_done
        if result.job_done:
            log.info("%s: the job is done", self.client.device_id)
            return
        if result.next_round != self.next_round:
            self.next_round = result.next_round
            # Availability was judged for another round: say it again for the right one.
            if self.availability(self.next_round) != available:
                await self.client.check_in(
                    consent=self.consent,
                    capabilities=self.capabilities,
                    available=self.availability(self.next_round),
                    for_round=self.next_round,
                )

    async def _recover(self, err: AggregatorError) -> None:
        if err.code in FATAL_CODES or isinstance(err, AggregatorUnreachable):
            raise err
        if err.reason == Refusal.NOT_CHECKED_IN:
            log.info("%s: unknown to the aggregator (restarted?): checking in again", self.client.device_id)
            await self._check_in()  # the aggregator restarted and forgot this device
            return
        if err.transient:
            # A call ran out of its task's deadline (an upload, a download): ask for the next task. Whether
            # the aggregator is gone is the client's call (AggregatorUnreachable), on its silence alone.
            log.info("%s: %s; retrying", self.client.device_id, err)
            self.doing = f"backing off after {err}"
            await asyncio.sleep(next(self._delays))
            return
        if err.reason is not None and err.code != grpc.StatusCode.NOT_FOUND:
            self.stats.rejected[err.reason] = self.stats.rejected.get(err.reason, 0) + 1
        log.info("%s: %s", self.client.device_id, err)

    async def _do(self, task: Task, stop: asyncio.Event) -> None:
        if task.kind == "done":
            log.info("%s: the job is done", self.client.device_id)
            self.stats.done = True
        elif task.kind == "train":
            await self._train(task, stop)
        elif task.kind == "evaluate":
            await self._evaluate(task)

    async def _weights(self, task: Task) -> Model:
        if self._model is None or self._model.version != task.model_version:
            self.doing = f"downloading model version {task.model_version} for round {task.round}"
            self._model = await self.client.download_model(task.model_version, deadline=task.deadline)
        return self._model

    async def _train(self, task: Task, stop: asyncio.Event) -> None:
        if task.secure is not None:
            await self._train_secure(task, stop)
            return
        model = await self._weights(task)
        result = await self._local_update(task, model, stop)
        if result is None:
            return
        self.doing = f"uploading the update of round {task.round}"
        receipt = await self.client.upload_update(
            task, result.delta, result.num_examples, result.train_loss, self.layout or model.layout
        )
        self.next_round = receipt.next_round
        if receipt.accepted:
            self.stats.accepted += 1
        else:
            self.stats.late += 1

    async def _local_update(self, task: Task, model: Model, stop: asyncio.Event) -> LocalResult | None:
        """Train; None when the device dropped out (it then sits out the round) or finished past the deadline."""
        self.doing = f"training for round {task.round}"
        result = await self.trainer.train(task, model.weights)
        if result is None:
            # Gone for the rest of the round (switched off, out of coverage): back after its deadline.
            self.stats.dropped += 1
            left = task.seconds_left()
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), left)
            return None
        self.stats.trained += 1
        if time.monotonic() >= task.deadline:
            self.stats.skipped_past_deadline += 1
            return None
        return result

    async def _train_secure(self, task: Task, stop: asyncio.Event) -> None:
        """The secure-aggregation round: keys first, then training, then the masked input and unmasking."""
        try:
            model = await self._weights(task)
            session = SecureSession(self.client, task, self._sent_secure)
            self.doing = f"exchanging keys for secure round {task.round}"
            await session.exchange_keys()
            result = await self._local_update(task, model, stop)
            if result is None:
                return
            self.doing = f"masking, sending and unmasking the update of secure round {task.round}"
            self.next_round = await session.submit(result.delta, result.num_examples)
            self.stats.accepted += 1
        except SecureRoundRefusedByDevice as refusal:
            log.warning("%s: not taking part in round %d: %s", self.client.device_id, task.round, refusal)
            self.stats.refused_secure_rounds += 1
        except AggregatorError as err:
            if not left_round(err):
                raise
            log.info("%s: out of secure round %d: %s", self.client.device_id, task.round, err)
            if err.reason == Refusal.ROUND_CLOSED:
                self.stats.late += 1
            else:
                self.stats.left_secure_rounds += 1

    async def _evaluate(self, task: Task) -> None:
        model = await self._weights(task)
        self.doing = f"evaluating model version {task.model_version}"
        result = await self.trainer.evaluate(task, model.weights)
        if result is None:
            return
        self.doing = f"reporting the evaluation of model version {task.model_version}"
        await self.client.report_evaluation(
            task, num_examples=result.num_examples, loss=result.loss, accuracy=result.accuracy
        )
        self.stats.evaluations += 1

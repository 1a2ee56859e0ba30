"""The round loop: the one sequence of steps every federated round takes, whatever carries the updates.

    candidates → start_round (cohort, privacy checks) → the transport plays the round until it closes →
    finish_round (aggregate, server step) → server evaluation → federated evaluation → commit (checkpoint
    and record, one atomic step) → observers (metrics, status, progress)

A transport only says how devices are reached: `runtime.inprocess` plays a round with the simulated fleet
inside the process in simulated time; `aggregator.transport` plays it over gRPC on the wall clock. The loop
owns everything else, so the two cannot disagree on evaluation cadence, outcome counting, stop handling or
what a run directory holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from fedfleet.engine.journal import EndKind, RunEnd, RunJournal
from fedfleet.engine.records import Evaluation, RoundRecord, record_from_result
from fedfleet.engine.round import TrainingRound
from fedfleet.engine.server import FederatedServer
from fedfleet.engine.types import RoundResult
from fedfleet.models.vector import Vector

log = logging.getLogger("fedfleet.engine")

#: Scores a model on the server's held-out data (None: the job has none).
Evaluator = Callable[[Vector], Evaluation | None]
#: Called after each committed round with its record and result.
RoundObserver = Callable[[RoundRecord, RoundResult], None]
#: What users of a runtime pass: called after each committed round with its record.
RoundCallback = Callable[[RoundRecord], None]


def record_observer(callback: RoundCallback) -> RoundObserver:
    return lambda record, _result: callback(record)


class RoundTransport(Protocol):
    """How the devices of a round are reached. Times are job seconds (the spec's deadlines)."""

    def now(self) -> float:
        """The job clock: simulated seconds in process, scaled wall seconds over gRPC."""
        ...

    @property
    def max_update_bytes(self) -> int | None: ...

    async def candidates(self, number: int) -> list[str] | None:
        """The devices that can be invited to round `number`, once enough are there; None when stopping."""
        ...

    async def play(self, training_round: TrainingRound) -> float | None:
        """Run the round until it closes (full, past its deadline, nobody left to hear from); returns how long
        it took in job seconds, or None when a stop abandoned it (the checkpoint stays at the round before)."""
        ...

    def round_finished(self, training_round: TrainingRound, result: RoundResult) -> None:
        """The server stepped the model: publish it to devices."""
        ...

    async def federated_evaluation(self, number: int, weights: Vector) -> Evaluation | None:
        """Devices score the new model on data they never trained on; the server sees only the scores."""
        ...


class RoundLoop:
    def __init__(
        self,
        server: FederatedServer,
        journal: RunJournal,
        transport: RoundTransport,
        evaluator: Evaluator | None = None,
        observers: Sequence[RoundObserver] = (),
    ) -> None:
        self.server = server
        self.journal = journal
        self.transport = transport
        self.evaluator = evaluator
        self.observers = list(observers)

    async def run(self) -> RunEnd:
        """Run rounds until the job ends or the transport stops; every finished round is committed."""
        server = self.server
        stops = _privacy_stops(server)
        while not server.done:
            number = server.round + 1
            candidates = await self.transport.candidates(number)
            if candidates is None:
                return self._interrupted()
            try:
                training_round = server.start_round(
                    candidates, now=self.transport.now(), max_update_bytes=self.transport.max_update_bytes
                )
            except stops as stop:
                # Refused before the round changed anything: the job ends here, as a success so far.
                log.info("round %d not started, the job ends: %s", number, stop)
                return RunEnd(EndKind.PRIVACY_BUDGET_EXHAUSTED, str(stop), server.round)
            log.info(
                "round %d: invited %d of %d candidates", number, len(training_round.config.cohort), len(candidates)
            )
            started_wall = time.perf_counter()
            job_seconds = await self.transport.play(training_round)
            if job_seconds is None:
                log.info("round %d abandoned on shutdown; resuming will run it again", number)
                return self._interrupted()
            result = server.finish_round(training_round)
            self.transport.round_finished(training_round, result)
            evaluation = await self._server_evaluation(number)
            federated = await self.transport.federated_evaluation(number, server.weights.copy())
            record = record_from_result(
                result,
                invited=len(training_round.config.cohort),
                dim=server.dim,
                evaluation=evaluation,
                federated=federated,
                sim_seconds=job_seconds,
                wall_seconds=time.perf_counter() - started_wall,
                epsilon=server.epsilon,
            )
            await asyncio.to_thread(self.journal.commit, server.checkpoint(), record)
            log.info(
                "round %d: %s, %d aggregated, %d dropped, %d late, %d surplus, %d rejected%s",
                number, "succeeded" if result.succeeded else f"failed ({result.failure})",
                record.participants, record.dropped, record.late, record.surplus, record.rejected,
                f", accuracy {evaluation.accuracy:.4f}" if evaluation else "",
            )  # fmt: skip
            for observe in self.observers:
                observe(record, result)
        return RunEnd(EndKind.ROUNDS_COMPLETED, f"{server.spec.rounds} rounds finished", server.round)

    def _interrupted(self) -> RunEnd:
        return RunEnd(EndKind.INTERRUPTED, "stopped before the job's end", self.server.round)

    async def _server_evaluation(self, number: int) -> Evaluation | None:
        every = self.server.spec.evaluation.server_every
        if self.evaluator is None or every == 0 or (number % every != 0 and number != self.server.spec.rounds):
            return None
        return await asyncio.to_thread(self.evaluator, self.server.weights.copy())


def _privacy_stops(server: FederatedServer) -> tuple[type[Exception], ...]:
    """The refusals that end a job with differential privacy; the DP libraries load only for such jobs."""
    if server.privacy is None:
        return ()
    from fedfleet.privacy.errors import PRIVACY_STOPS

    return PRIVACY_STOPS

"""The in-process transport: the simulated fleet plays each round inside the process, in simulated time.

Every invitee draws, from its own keyed stream (the same one its gRPC twin in `sim.network_fleet` draws
from), whether it drops out and how long its compute and network take. Reports arrive in that order; the
round takes them until it is full or its deadline passes. Only devices whose report is used actually train,
which keeps the simulation cheap without changing its result. What the round records about the others is
what a server could see — the round loop and `TrainingRound` decide it, exactly as over gRPC.
"""

from __future__ import annotations

from fedfleet.device.training import evaluate, train_local
from fedfleet.engine.records import Evaluation
from fedfleet.engine.round import TrainingRound, UpdateRejected
from fedfleet.engine.seeding import Purpose, derive_seed, stream
from fedfleet.engine.server import FederatedServer
from fedfleet.engine.types import ModelUpdate, RoundResult
from fedfleet.models.params import load_flat_parameters
from fedfleet.models.vector import Vector
from fedfleet.sim.attacks import attack_update
from fedfleet.sim.fleet import device_round_plan, is_available
from fedfleet.sim.task import SimulatedTask


class InProcessTransport:
    """Rounds start at simulated time 0; `play` returns when, in simulated seconds, the round closed."""

    max_update_bytes: int | None = None

    def __init__(self, task: SimulatedTask, server: FederatedServer) -> None:
        self.task = task
        self.spec = task.spec
        self.server = server
        self.model = task.model.new_model()
        self._available: list[str] = []
        self.stopping = False  # set between rounds: the loop ends before the next one, as on a shutdown

    def now(self) -> float:
        return 0.0

    async def candidates(self, number: int) -> list[str] | None:
        if self.stopping:
            return None
        interval_hours = self.spec.simulation.availability.round_interval_minutes / 60.0
        now_hours = (number - 1) * interval_hours
        self._available = [p.device_id for p in self.task.fleet if is_available(p, now_hours)]
        return list(self._available)

    async def play(self, training_round: TrainingRound) -> float:
        number = training_round.number
        arrivals: list[tuple[float, str]] = []
        for device_id in training_round.config.cohort:
            ordinal = self.task.ordinal(device_id)
            seconds = device_round_plan(self.spec, self.task.fleet[ordinal], number, ordinal)
            if seconds is not None:  # None: it drops out, silently
                arrivals.append((seconds, device_id))
        arrivals.sort()
        deadline = training_round.config.deadline - self.now()
        for seconds, device_id in arrivals:
            if seconds > deadline:
                return deadline  # the rest miss it: to the server they are gone
            try:
                training_round.submit(self._train(number, device_id), now=seconds)
            except UpdateRejected:
                continue  # counted by the round under its reason; the device may not try again this round
            if training_round.is_full:
                return seconds
        # Nobody left to hear from closes the round early; anyone silent keeps it open to the deadline.
        if arrivals and not training_round.pending():
            return arrivals[-1][0]
        return deadline

    def round_finished(self, training_round: TrainingRound, result: RoundResult) -> None:
        """Devices read the global weights from the server directly: nothing to publish."""

    async def federated_evaluation(self, number: int, weights: Vector) -> Evaluation | None:
        ev = self.spec.evaluation
        if ev.federated_every == 0 or number % ev.federated_every != 0:
            return None
        holders = sorted(d for d in self._available if len(self.task.profile(d).holdout_indices) > 0)
        if not holders:
            return None
        rng = stream(self.spec.seed, Purpose.EVALUATION, number)
        chosen = rng.choice(len(holders), size=min(ev.federated_clients, len(holders)), replace=False)
        load_flat_parameters(self.model, weights)
        loss_sum = correct = total = 0.0
        for i in sorted(chosen.tolist()):
            profile = self.task.profile(holders[i])
            x = self.task.train.x[profile.holdout_indices]
            y = self.task.train.y[profile.holdout_indices]
            report = evaluate(self.model, x, y)
            loss_sum += report.loss * report.num_examples
            correct += report.accuracy * report.num_examples
            total += report.num_examples
        return Evaluation(loss_sum / total, correct / total, int(total))

    def _train(self, number: int, device_id: str) -> ModelUpdate:
        spec, task = self.spec, self.task
        profile = task.profile(device_id)
        index = task.ordinal(device_id)
        local = train_local(
            self.model,
            task.train.x[profile.train_indices],
            task.train.y[profile.train_indices],
            global_weights=self.server.weights,
            epochs=spec.training.local_epochs,
            batch_size=spec.training.batch_size,
            learning_rate=spec.training.learning_rate,
            proximal_mu=spec.proximal_mu,
            seed=derive_seed(spec.seed, Purpose.TRAINING, number, index),
        )
        delta = local.delta
        if profile.byzantine:
            delta = attack_update(delta, spec.simulation.byzantine, stream(spec.seed, Purpose.ATTACK, number, index))
        return ModelUpdate(device_id, number, local.num_examples, delta, local.train_loss)

"""The embedded runtime: a whole federated job in one process, with the simulated fleet in simulated time.

Each round follows the production rules of the round engine: the server invites a cohort from the devices
available at this hour of the simulated day; each invitee either drops out or finishes after its simulated
compute and network time; the first `clientsPerRound` reports before the deadline are aggregated, the rest
are late. Only devices whose report will be used actually train, which keeps the simulation cheap without
changing its result.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedfleet.api.federatedjob import FederatedJob
from fedfleet.device.training import evaluate, train_local
from fedfleet.engine.round import TrainingRound, UpdateRejected
from fedfleet.engine.seeding import Purpose, derive_seed, stream
from fedfleet.engine.server import FederatedServer
from fedfleet.engine.types import ModelUpdate
from fedfleet.models.params import load_flat_parameters
from fedfleet.persist.atomic import atomic_write_text
from fedfleet.persist.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fedfleet.runtime.records import (
    Evaluation,
    RoundRecord,
    RunPaths,
    append_record,
    record_from_result,
    truncate_records,
)
from fedfleet.runtime.task import SimulatedTask, build_task, save_model
from fedfleet.sim.attacks import attack_update
from fedfleet.sim.fleet import is_available, training_seconds


class RunExistsError(Exception):
    """The output directory already holds a run and the user did not ask to resume it."""


def default_ledger_path() -> Path:
    """The machine's privacy ledger: ε accumulates per device across every job run here."""
    configured = os.environ.get("FEDFLEET_LEDGER")
    if configured:
        return Path(configured)
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "fedfleet" / "privacy-ledger.db"


class UnsupportedOnEmbeddedRuntime(Exception):
    """The job asks for something the embedded runtime cannot do."""


RoundCallback = Callable[[RoundRecord], None]


class LocalRuntime:
    def __init__(
        self, job: FederatedJob, out_dir: Path, task: SimulatedTask | None = None, ledger_path: Path | None = None
    ) -> None:
        self.job = job
        self.spec = job.spec
        self.paths = RunPaths(out_dir)
        if self.spec.privacy.secure_aggregation.enabled:
            raise UnsupportedOnEmbeddedRuntime(
                "spec.privacy.secureAggregation: secure aggregation runs between devices and the aggregator over"
                " gRPC; run the job with `fedfleet run --transport grpc` (the default)"
            )
        self.task = task or build_task(self.spec)
        self.model = self.task.new_model()
        self.ledger_path = ledger_path
        self.server = FederatedServer(self.spec, self.task.initial_weights())
        self.records: list[RoundRecord] = []
        self.stop_reason: str | None = None  # why the job ended before its last round, if it did

    def prepare(self, resume: bool) -> None:
        """Start fresh, or continue from the checkpoint; never silently overwrite an earlier run."""
        ckpt = load_checkpoint(self.paths.checkpoint)
        if ckpt is None:
            if resume and self.paths.metrics.exists():
                raise CheckpointError(f"{self.paths.root}: metrics exist but the checkpoint is missing")
            if self.paths.metrics.exists():
                raise RunExistsError(f"{self.paths.root} already holds a run; pass --resume or choose another --out")
            self.paths.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.paths.run_id, uuid.uuid4().hex)
            self.paths.metrics.touch()
            self._attach_privacy()
            return
        if not resume:
            raise RunExistsError(
                f"{self.paths.root} already holds a run (round {ckpt.round}); pass --resume or choose another --out"
            )
        self._attach_privacy()
        self.server.restore(ckpt)
        self.records = truncate_records(self.paths.metrics, ckpt.round)

    def _attach_privacy(self) -> None:
        """Differential privacy, with the ledger keyed by this run's id so a resumed run never charges twice."""
        if self.spec.privacy.differential_privacy.mode == "off":
            return
        from fedfleet.privacy.job import JobPrivacy
        from fedfleet.privacy.ledger import PrivacyLedger

        ledger = PrivacyLedger(self.ledger_path or default_ledger_path())
        job_key = f"{self.job.metadata.name}/{self.paths.run_id.read_text().strip()}"
        self.server.privacy = JobPrivacy(self.spec, len(self.task.fleet), ledger, job_key)

    def run(self, on_round: RoundCallback | None = None) -> list[RoundRecord]:
        stops: tuple[type[Exception], ...] = ()
        if self.server.privacy is not None:
            from fedfleet.privacy.errors import PRIVACY_STOPS

            stops = PRIVACY_STOPS
        while not self.server.done:
            try:
                record = self.run_round()
            except stops as stop:
                # Refused before the round changed anything: the job ends here, as a success so far.
                self.stop_reason = f"PrivacyBudgetExhausted: {stop}"
                break
            # The checkpoint goes first: a crash between the two writes leaves a record that resume discards.
            save_checkpoint(self.paths.checkpoint, self.server.checkpoint())
            append_record(self.paths.metrics, record)
            self.records.append(record)
            if on_round is not None:
                on_round(record)
        return self.records

    def run_round(self) -> RoundRecord:
        started = time.perf_counter()
        spec, server = self.spec, self.server
        number = server.round + 1
        interval_hours = spec.simulation.availability.round_interval_minutes / 60.0
        now_hours = (number - 1) * interval_hours
        available = [p.device_id for p in self.task.fleet if is_available(p, now_hours)]
        training_round = server.start_round(available, now=0.0)
        sim_seconds = self._simulate_round(training_round)
        result = server.finish_round(training_round)

        evaluation = self._server_evaluation(number)
        federated = self._federated_evaluation(number, available)
        return record_from_result(
            result,
            invited=len(training_round.config.cohort),
            dim=server.dim,
            evaluation=evaluation,
            federated=federated,
            sim_seconds=sim_seconds,
            wall_seconds=time.perf_counter() - started,
            epsilon=server.epsilon,
        )

    def _simulate_round(self, training_round: TrainingRound) -> float:
        """Play the cohort's round in simulated time; returns when the round closed (simulated seconds)."""
        spec, task = self.spec, self.task
        number = training_round.number
        rng = stream(spec.seed, Purpose.SIMULATION, number)
        arrivals: list[tuple[float, str]] = []
        for device_id in training_round.config.cohort:
            profile = task.profile(device_id)
            if rng.random() < profile.dropout_probability:
                training_round.report_dropped(device_id)
                continue
            seconds = training_seconds(profile, len(profile.train_indices), spec.training.local_epochs, rng)
            arrivals.append((seconds, device_id))
        arrivals.sort()

        deadline = training_round.config.deadline
        update_bytes = self.server.dim * 4
        # Without enough reports the round waits for the last arrival, or until the deadline.
        closed_at = min(deadline, max((t for t, _ in arrivals), default=0.0))
        filled_at: float | None = None
        for seconds, device_id in arrivals:
            if seconds > deadline or filled_at is not None:
                training_round.report_late(device_id, update_bytes)
                continue
            try:
                training_round.submit(self._train_device(number, device_id), now=seconds)
            except UpdateRejected:
                continue  # counted by the round under its reason; the device may not try again this round
            if training_round.is_full:
                filled_at = seconds
        return filled_at if filled_at is not None else closed_at

    def _train_device(self, number: int, device_id: str) -> ModelUpdate:
        spec, task = self.spec, self.task
        profile = task.profile(device_id)
        index = task.ordinal(device_id)
        x = task.train.x[profile.train_indices]
        y = task.train.y[profile.train_indices]
        local = train_local(
            self.model,
            x,
            y,
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

    def _server_evaluation(self, number: int) -> Evaluation | None:
        every = self.spec.evaluation.server_every
        test = self.task.test
        if test is None or every == 0 or (number % every != 0 and number != self.spec.rounds):
            return None
        load_flat_parameters(self.model, self.server.weights)
        result = evaluate(self.model, test.x, test.y)
        return Evaluation(result.loss, result.accuracy, result.num_examples)

    def _federated_evaluation(self, number: int, available: list[str]) -> Evaluation | None:
        """Devices evaluate the new global model on data they never trained on; the server sees only scores."""
        ev = self.spec.evaluation
        if ev.federated_every == 0 or number % ev.federated_every != 0:
            return None
        holders = sorted(d for d in available if len(self.task.profile(d).holdout_indices) > 0)
        if not holders:
            return None
        rng = stream(self.spec.seed, Purpose.EVALUATION, number)
        chosen = rng.choice(len(holders), size=min(ev.federated_clients, len(holders)), replace=False)
        load_flat_parameters(self.model, self.server.weights)
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

    def final_weights(self) -> np.ndarray:
        return self.server.weights.copy()

    def save_model(self) -> Path:
        return save_model(self.paths.model, self.task, self.server.weights, self.server.round)

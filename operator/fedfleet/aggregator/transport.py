"""The gRPC transport of the round loop: devices reached through the hub, on the wall clock.

`candidates` waits until enough devices checked in and the others had a chance to say whether they can
work; `play` opens the round in the hub and waits until it is full, past its deadline, or has no invitee
left to hear from — in a job with secure aggregation, a `SecureRound` runs the round's four stages and hands
the engine only the aggregate; `federated_evaluation` runs a campaign among idle devices.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedfleet.engine.journal import RunEnd, RunJournal
from fedfleet.engine.loop import Evaluator, RoundLoop, RoundObserver
from fedfleet.engine.records import Evaluation
from fedfleet.engine.round import TrainingRound
from fedfleet.engine.seeding import Purpose, stream
from fedfleet.engine.types import RoundResult
from fedfleet.models.vector import Vector

from .campaigns import EvaluationCampaign
from .hub import DeviceHub
from .secure_round import SecureRound, build_secure_round

if TYPE_CHECKING:
    from fedfleet.privacy.job import JobPrivacy


class GrpcTransport:
    def __init__(self, hub: DeviceHub, privacy: JobPrivacy | None = None) -> None:
        self.hub = hub
        self.spec = hub.spec
        self.privacy = privacy
        self.min_devices = hub.settings.min_devices or self.spec.cohort.clients_per_round
        self._closed_at = 0.0

    @property
    def max_update_bytes(self) -> int:
        return self.hub.max_update_bytes

    def now(self) -> float:
        return self.hub.job_now()

    async def candidates(self, number: int) -> list[str] | None:
        """Wait until enough devices can be invited and the others had a chance to say whether they can."""
        hub, registry = self.hub, self.hub.registry
        hub.serving = True
        enough_since: float | None = None
        while not hub.stop_requested():
            now = hub.clock()
            candidates = registry.candidates(number, now)
            hub.metrics.devices_checked_in.set(len(registry.connected(now)))
            hub.metrics.devices_available.set(len(candidates))
            timeout = 1.0  # re-check now and then: silent devices expire
            if len(candidates) >= self.min_devices:
                enough_since = now if enough_since is None else enough_since
                quiet_left = registry.last_new_device_at + hub.settings.quiet_seconds - now
                settle_left = enough_since + hub.settings.settle_seconds - now
                if (quiet_left <= 0 and registry.settled(number, now)) or settle_left <= 0:
                    return candidates
                timeout = min(timeout, settle_left, max(quiet_left, 0.01))
            else:
                enough_since = None
            await hub.wait_progress(timeout)
        return None

    async def play(self, training_round: TrainingRound) -> float | None:
        hub = self.hub
        started = hub.job_now()
        secure = self._start_secure_round(training_round) if hub.uses_secure_aggregation else None
        hub.open_round(training_round, secure)
        if secure is not None:
            await secure.run(hub.stop_requested)
            finished = secure.result is not None
        else:
            await self._until_closed(training_round)
            finished = training_round.is_full
        if hub.stop_requested() and not finished:
            hub.abandon_round()
            return None
        if secure is not None:
            secure.close_training_round()
        self._closed_at = time.perf_counter()
        return hub.job_now() - started

    def round_finished(self, training_round: TrainingRound, result: RoundResult) -> None:
        self.hub.metrics.aggregation_seconds.observe(time.perf_counter() - self._closed_at)
        self.hub.round_closed(training_round)

    async def federated_evaluation(self, number: int, weights: Vector) -> Evaluation | None:
        """Chosen idle devices evaluate the new model on data they never trained on."""
        hub, ev = self.hub, self.spec.evaluation
        if ev.federated_every == 0 or number % ev.federated_every != 0:
            return None
        holders = sorted(
            d.device_id
            for d in hub.registry.connected(hub.clock())
            if d.consent and d.available and d.busy_round == 0 and d.holdout_examples > 0
        )
        if not holders:
            return None
        rng = stream(self.spec.seed, Purpose.EVALUATION, number)
        picked = rng.choice(len(holders), size=min(ev.federated_clients, len(holders)), replace=False)
        campaign = EvaluationCampaign(
            version=hub.snapshot.version,
            chosen=frozenset(holders[i] for i in picked.tolist()),
            deadline=hub.job_now() + self.spec.cohort.round_deadline_seconds,
        )
        hub.campaign = campaign
        hub.tasks_changed()
        while not hub.stop_requested() and not campaign.complete and hub.job_now() < campaign.deadline:
            await hub.wait_progress((campaign.deadline - hub.job_now()) * hub.settings.time_scale)
        hub.campaign = None
        hub.tasks_changed()
        return campaign.result()

    async def _until_closed(self, training_round: TrainingRound) -> None:
        hub, deadline = self.hub, training_round.config.deadline
        while not hub.stop_requested():
            now = hub.job_now()
            if training_round.is_full or now >= deadline or not training_round.pending():
                return
            await hub.wait_progress((deadline - now) * hub.settings.time_scale)

    def _start_secure_round(self, training_round: TrainingRound) -> SecureRound:
        hub = self.hub
        examples = {}
        for device in training_round.config.cohort:
            state = hub.registry.get(device)
            examples[device] = state.train_examples if state is not None else 0
        return build_secure_round(
            training_round,
            self.spec,
            examples,
            noise_multiplier=self.privacy.noise_multiplier if self.privacy is not None else None,
            deadline_wall_seconds=self.spec.cohort.round_deadline_seconds * hub.settings.time_scale,
            wall_left=lambda: hub.wall_left(training_round.config.deadline),
            metrics=hub.metrics,
            hasher=hub.hasher,
        )


async def serve_rounds(
    hub: DeviceHub,
    journal: RunJournal,
    evaluator: Evaluator | None = None,
    observers: Sequence[RoundObserver] = (),
) -> RunEnd:
    """The aggregator's rounds: the round loop over the hub's devices; once the job is complete, every
    device is told DONE."""
    transport = GrpcTransport(hub, hub.server.privacy)
    end = await RoundLoop(hub.server, journal, transport, evaluator, observers).run()
    if end.complete:
        hub.finish()
    return end

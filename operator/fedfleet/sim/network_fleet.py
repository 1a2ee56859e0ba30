"""The simulated fleet over real gRPC: `fedfleet device-sim`, and the fleet half of `fedfleet run --transport grpc`.

Each simulated device of the job (its data partition, speed, availability, dropouts and attacks, all from
`sim.task.build_task`) runs the real device SDK as one asyncio task with its own TLS connection and token. Simulated
compute and network time become real sleeps scaled by `time_scale`; the torch training itself runs in a small
thread pool (one model per thread). Random draws use the same keyed streams as the in-process runtime, so a
device makes the same choices (dropout, duration, training shuffle, attack) in both.

Slow is not failure: a call that runs out of time is tried again with a longer deadline, and a device gives
up only when the aggregator has answered nothing at all for `give_up_after` — a bound that grows with the
job's round deadline at the fleet's time scale. How each device ended (`DeviceEnd`) is what the report and
`fedfleet device-sim`'s exit status say.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum

from fedfleet.api.federatedjob import FederatedJob, FederatedJobSpec
from fedfleet.device.agent import FATAL_CODES, AgentStats, DeviceAgent, describe_failure
from fedfleet.device.client import (
    CALL_TIMEOUT_SECONDS,
    AggregatorError,
    AggregatorUnreachable,
    Capabilities,
    DeviceClient,
    Task,
)
from fedfleet.device.retry import Backoff
from fedfleet.device.torch_trainer import ModelPool, TorchTrainer
from fedfleet.device.training import EvalResult, LocalResult
from fedfleet.engine.seeding import Purpose, derive_seed, stream
from fedfleet.models.vector import Vector
from fedfleet.security.tokens import issue_token, job_identity
from fedfleet.sim.attacks import attack_update
from fedfleet.sim.fleet import DeviceProfile, device_round_plan, is_available
from fedfleet.sim.task import SimulatedTask, build_task

log = logging.getLogger("fedfleet.sim")

#: A simulated device gives up on an aggregator that answered nothing for at least this long (an aggregator
#: restarted after a crash needs time to load its job) ...
MIN_GIVE_UP_SECONDS = 120.0
#: ... and for at least this many of the job's round deadlines at the fleet's time scale: a device is as
#: patient with the aggregator as a round is with the device, twice over.
GIVE_UP_ROUND_DEADLINES = 2.0


def give_up_seconds(spec: FederatedJobSpec, time_scale: float) -> float:
    """How long a simulated device of this job waits for an aggregator that answers nothing, by default."""
    return max(MIN_GIVE_UP_SECONDS, GIVE_UP_ROUND_DEADLINES * spec.cohort.round_deadline_seconds * time_scale)


@dataclass(frozen=True)
class FleetSettings:
    target: str  # host:port of the aggregator
    token_key: bytes
    ca_pem: bytes
    devices: int | None = None  # the first N devices of the job's fleet (default: all)
    time_scale: float = 1.0  # wall seconds per simulated second
    workers: int = 2  # training threads
    token_ttl_seconds: float = 86400.0
    # A device stops only after the aggregator answered nothing for this long; default: `give_up_seconds`.
    give_up_after: float | None = None
    call_timeout: float = CALL_TIMEOUT_SECONDS  # the first try of a short call; doubled after each time-out
    consent: Callable[[int], bool] = lambda ordinal: True


class DeviceEnd(StrEnum):
    """How one simulated device's run ended."""

    DONE = "done"  # the aggregator told it the job is done
    STOPPED = "stopped"  # stopped from outside (`stop`) before it heard that
    GAVE_UP = "gave_up"  # the aggregator answered nothing for the whole give-up bound
    REFUSED = "refused"  # the aggregator refused it for good: its token, or a token for another job
    FAILED = "failed"  # anything else: a bug or unusable data, never a slow or restarting aggregator


#: What the report says of the devices that ended each way.
END_PHRASES: dict[DeviceEnd, str] = {
    DeviceEnd.DONE: "heard the job is done",
    DeviceEnd.STOPPED: "were stopped before the job's end",
    DeviceEnd.GAVE_UP: "gave up on an aggregator that did not answer",
    DeviceEnd.REFUSED: "were refused by the aggregator",
    DeviceEnd.FAILED: "failed",
}


def device_end(outcome: AgentStats | BaseException) -> DeviceEnd:
    if isinstance(outcome, AgentStats):
        return DeviceEnd.DONE if outcome.done else DeviceEnd.STOPPED
    if isinstance(outcome, AggregatorUnreachable):
        return DeviceEnd.GAVE_UP
    if isinstance(outcome, AggregatorError) and outcome.code in FATAL_CODES:
        return DeviceEnd.REFUSED
    return DeviceEnd.FAILED


@dataclass
class FleetReport:
    devices: int
    completed: int = 0  # devices that were told the job is done
    totals: AgentStats = field(default_factory=AgentStats)
    check_in_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "device: what happened", one per device that did not finish
    ends: Counter[DeviceEnd] = field(default_factory=Counter)
    first_error: dict[DeviceEnd, str] = field(default_factory=dict)  # the first of `errors` for each way to end
    retried: Counter[str] = field(default_factory=Counter)  # calls tried again, by the status code of the failure
    give_up_after: float = 0.0
    wall_seconds: float = 0.0


class SimulatedTrainer:
    """One simulated device's local work: real torch training, simulated duration, dropouts and attacks."""

    def __init__(
        self, task: SimulatedTask, profile: DeviceProfile, ordinal: int, time_scale: float, inner: TorchTrainer
    ) -> None:
        self.task = task
        self.spec = task.spec
        self.profile = profile
        self.ordinal = ordinal
        self.time_scale = time_scale
        self.inner = inner

    async def train(self, task: Task, weights: Vector) -> LocalResult | None:
        epochs = task.training.local_epochs if task.training else None
        planned = device_round_plan(self.spec, self.profile, task.round, self.ordinal, epochs)
        if planned is None:
            return None  # it drops out, silently
        seconds = planned * self.time_scale
        started = time.monotonic()
        result = await self.inner.train(task, weights)
        if result is not None and self.profile.byzantine:
            attack_rng = stream(self.spec.seed, Purpose.ATTACK, task.round, self.ordinal)
            result = replace(result, delta=attack_update(result.delta, self.spec.simulation.byzantine, attack_rng))
        # A straggler whose simulated time runs past the round's deadline misses it: it stops waiting there
        # (the agent then skips the useless upload) instead of sleeping out a heavy-tailed duration.
        left = min(seconds, task.deadline - started) - (time.monotonic() - started)
        if left > 0:
            await asyncio.sleep(left)
        return result

    async def evaluate(self, task: Task, weights: Vector) -> EvalResult | None:
        return await self.inner.evaluate(task, weights)


def _availability(profile: DeviceProfile, interval_hours: float) -> Callable[[int], bool]:
    """Whether the device can work in round r: its daily window at the simulated hour round r starts."""

    def available(next_round: int) -> bool:
        return is_available(profile, (max(next_round, 1) - 1) * interval_hours)

    return available


async def run_fleet(
    job: FederatedJob,
    settings: FleetSettings,
    task: SimulatedTask | None = None,
    stop: asyncio.Event | None = None,
) -> FleetReport:
    """Run the simulated devices until the aggregator says the job is done, they give up, or `stop` is set."""
    task = task or build_task(job.spec)
    count = settings.devices if settings.devices is not None else len(task.fleet)
    if not 1 <= count <= len(task.fleet):
        raise ValueError(f"--devices must be in 1..{len(task.fleet)} (simulation.devices of the job), got {count}")
    spec = job.spec
    identity = job_identity(job.metadata.name, job.metadata.namespace)
    interval_hours = spec.simulation.availability.round_interval_minutes / 60.0
    models = ModelPool(task.model.new_model)
    give_up_after = settings.give_up_after
    if give_up_after is None:
        give_up_after = give_up_seconds(spec, settings.time_scale)
    executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="fleet-train")
    report = FleetReport(devices=count, give_up_after=give_up_after)
    agents: dict[int, DeviceAgent] = {}  # what each device was doing when it failed (describe_failure)
    started = time.monotonic()

    async def one(ordinal: int) -> AgentStats:
        profile = task.fleet[ordinal]
        token = issue_token(settings.token_key, identity, profile.device_id, settings.token_ttl_seconds)
        inner = TorchTrainer(
            models,
            task.train.x[profile.train_indices],
            task.train.y[profile.train_indices],
            holdout_x=task.train.x[profile.holdout_indices],
            holdout_y=task.train.y[profile.holdout_indices],
            seed=lambda r: derive_seed(spec.seed, Purpose.TRAINING, r, ordinal),
            executor=executor,
        )
        async with DeviceClient(
            settings.target,
            device_id=profile.device_id,
            token=token,
            root_certificates=settings.ca_pem,
            backoff=Backoff(),
            give_up_after=give_up_after,
            call_timeout=settings.call_timeout,
        ) as client:
            agent = DeviceAgent(
                client,
                SimulatedTrainer(task, profile, ordinal, settings.time_scale, inner),
                consent=settings.consent(ordinal),
                capabilities=Capabilities(
                    train_examples=profile.num_examples,
                    holdout_examples=int(profile.holdout_indices.size),
                    platform="fedfleet-sim",
                ),
                availability=_availability(profile, interval_hours),
            )
            agents[ordinal] = agent
            try:
                return await agent.run(stop)
            finally:
                report.check_in_seconds.extend(client.check_in_seconds)
                report.retried.update(client.retried)

    try:
        results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    for ordinal, outcome in enumerate(results):
        end = device_end(outcome)
        report.ends[end] += 1
        if isinstance(outcome, BaseException):
            doing = agents[ordinal].doing if ordinal in agents else "setting up its token, trainer and connection"
            error = f"{task.fleet[ordinal].device_id}: {describe_failure(outcome, doing)}"
            report.errors.append(error)
            report.first_error.setdefault(end, error)
            continue
        _add(report.totals, outcome)
        report.completed += int(outcome.done)
    report.wall_seconds = time.monotonic() - started
    return report


def _add(total: AgentStats, one: AgentStats) -> None:
    total.trained += one.trained
    total.accepted += one.accepted
    total.late += one.late
    total.skipped_past_deadline += one.skipped_past_deadline
    total.dropped += one.dropped
    total.evaluations += one.evaluations
    total.check_ins += one.check_ins
    for reason, n in one.rejected.items():
        total.rejected[reason] = total.rejected.get(reason, 0) + n


def render_report(report: FleetReport) -> str:
    """The run in one line: how many devices heard the job is done, what they did, and the calls a slow or
    restarting aggregator made them try again."""
    t = report.totals
    retried = ", ".join(f"{n} {code}" for code, n in report.retried.most_common())
    return (
        f"{report.completed}/{report.devices} devices finished in {report.wall_seconds:.1f}s: "
        f"{t.trained} trainings, {t.accepted} accepted, {t.late} late, {t.dropped} dropped, "
        f"{t.evaluations} evaluations, {t.check_ins} check-ins"
        + (f", rejected {t.rejected}" if t.rejected else "")
        + (f"; calls tried again after {retried}" if retried else "")
    )


def render_failures(report: FleetReport) -> list[str]:
    """One line for each way devices ended other than hearing the job is done, with the first device's story."""
    lines = []
    for end in (DeviceEnd.REFUSED, DeviceEnd.GAVE_UP, DeviceEnd.FAILED, DeviceEnd.STOPPED):
        n = report.ends[end]
        if n == 0:
            continue
        line = f"{n} of {report.devices} devices {END_PHRASES[end]}"
        if end == DeviceEnd.GAVE_UP:
            line += f" for {report.give_up_after:.0f}s"
        first = report.first_error.get(end)
        lines.append(line + (f" (first: {first})" if first else ""))
    return lines

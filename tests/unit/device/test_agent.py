"""When a device's agent stops: when it hears the job is done (from a task or a check-in), when the aggregator
refuses it for good, or when the client finds the aggregator gone — never because a call ran out of time."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from fedfleet.device.agent import DeviceAgent
from fedfleet.device.client import (
    AggregatorError,
    AggregatorUnreachable,
    CheckInResult,
    DeviceClient,
    Model,
    Task,
    TrainingConfig,
)
from fedfleet.device.training import EvalResult, LocalResult
from fedfleet.models.vector import Vector


class ScriptedClient:
    """Enough of DeviceClient for an agent: each call answers from its script, in order."""

    device_id = "dev-00007"

    def __init__(self, job_done: bool = False, tasks: list[Task | BaseException] | None = None) -> None:
        self.job_done = job_done
        self.tasks = list(tasks or [])
        self.polls = 0
        self.downloads = 0
        # Tiny on purpose: the agent must not judge the aggregator's silence itself (by the time since its
        # last task, it would have given up after any training at all).
        self.give_up_after = 1e-9

    async def check_in(self, **_: Any) -> CheckInResult:
        return CheckInResult("job", next_round=3, total_rounds=3, job_done=self.job_done, poll_seconds=1.0)

    async def next_task(self, **_: Any) -> Task:
        self.polls += 1
        step = self.tasks.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    async def download_model(self, version: int, deadline: float | None = None) -> Model:
        self.downloads += 1
        raise AggregatorError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")  # past the task's deadline


class NoTraining:
    async def train(self, task: Task, weights: Vector) -> LocalResult | None:
        raise AssertionError("the model never arrived: nothing to train")

    async def evaluate(self, task: Task, weights: Vector) -> EvalResult | None:
        raise AssertionError("no evaluation task was given")


TRAIN = Task(
    "train",
    next_round=3,
    round=3,
    model_version=2,
    training=TrainingConfig(local_epochs=1, batch_size=10, learning_rate=0.1, proximal_mu=0.0),
)
DONE = Task("done", next_round=4)


def agent_for(client: ScriptedClient) -> DeviceAgent:
    return DeviceAgent(cast(DeviceClient, client), NoTraining())


def test_a_device_that_checks_in_after_the_end_is_done_at_once() -> None:
    client = ScriptedClient(job_done=True)
    stats = asyncio.run(agent_for(client).run())
    assert stats.done and stats.check_ins == 1 and client.polls == 0


def test_a_call_that_ran_out_of_its_tasks_deadline_does_not_end_the_device() -> None:
    client = ScriptedClient(tasks=[TRAIN, DONE])
    stats = asyncio.run(agent_for(client).run())
    assert client.downloads == 1 and client.polls == 2
    assert stats.done and stats.trained == 0


def test_a_device_stops_when_the_client_finds_the_aggregator_gone() -> None:
    last = AggregatorError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    gone = AggregatorUnreachable("agg:443", 121.0, 120.0, last)
    agent = agent_for(ScriptedClient(tasks=[gone]))
    with pytest.raises(AggregatorUnreachable) as stopped:
        asyncio.run(agent.run())
    assert stopped.value.__notes__ == ["while waiting for a task for round 3"]
    assert "no answer from the aggregator at agg:443 for 121s (the limit is 120s)" in str(stopped.value)


def test_a_device_refused_for_good_stops() -> None:
    refused = AggregatorError(grpc.StatusCode.PERMISSION_DENIED, "token for another job")
    with pytest.raises(AggregatorError) as stopped:
        asyncio.run(agent_for(ScriptedClient(tasks=[refused])).run())
    assert stopped.value.code == grpc.StatusCode.PERMISSION_DENIED

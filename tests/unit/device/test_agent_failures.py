"""A device's failure always says what happened: the exception's type, its message or that it had none, its
cause, and what the device was doing. TimeoutError and CancelledError have no message of their own, and a
fleet report that read `dev-00018: ` told nobody anything."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from fedfleet.device.agent import DeviceAgent, describe_failure
from fedfleet.device.client import AggregatorError, CheckInResult, DeviceClient, Model, Task, TrainingConfig
from fedfleet.device.training import EvalResult, LocalResult
from fedfleet.models.vector import Vector


def raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """`exc` as it looks once raised (from `cause`), with its traceback and context set."""
    try:
        if cause is None:
            raise exc
        raise exc from cause
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), "TimeoutError (no message)"),
        (asyncio.CancelledError(), "CancelledError (no message)"),
        (RuntimeError("   "), "RuntimeError (no message)"),
        (ValueError("the layout has 3 tensors, the model 4"), "ValueError: the layout has 3 tensors, the model 4"),
        (
            AggregatorError(grpc.StatusCode.UNAVAILABLE, "connection refused"),
            "AggregatorError: UNAVAILABLE: connection refused",
        ),
    ],
    ids=["timeout", "cancelled", "blank message", "message", "aggregator error"],
)
def test_a_failure_is_described_by_its_type_and_message(exc: BaseException, expected: str) -> None:
    assert describe_failure(raised(exc)) == expected


def test_the_cause_and_the_notes_are_part_of_the_description() -> None:
    exc = raised(TimeoutError(), cause=ConnectionResetError("peer went away"))
    exc.add_note("while uploading the update of round 7")
    assert describe_failure(exc) == (
        "TimeoutError (no message) (from ConnectionResetError: peer went away) while uploading the update of round 7"
    )
    # An exception raised while another was being handled names that one too, unless it said `from None`.
    try:
        try:
            raise KeyError("slot")
        except KeyError:
            raise asyncio.CancelledError() from None
    except asyncio.CancelledError as suppressed:
        assert describe_failure(suppressed) == "CancelledError (no message)"
    try:
        try:
            raise OSError("disk full")
        except OSError:
            raise TimeoutError()  # noqa: B904 - the implicit context is what this case is about
    except TimeoutError as chained:
        assert describe_failure(chained) == "TimeoutError (no message) (from OSError: disk full)"


class FakeClient:
    """Just enough of DeviceClient for an agent: it checks in, gets one TRAIN task, and the download fails."""

    device_id = "dev-00018"
    give_up_after = 30.0

    def __init__(self, download_error: BaseException) -> None:
        self.download_error = download_error

    async def check_in(self, **_: Any) -> CheckInResult:
        return CheckInResult("job", next_round=2, total_rounds=5, job_done=False, poll_seconds=1.0)

    async def next_task(self, **_: Any) -> Task:
        training = TrainingConfig(local_epochs=1, batch_size=10, learning_rate=0.1, proximal_mu=0.0)
        return Task("train", next_round=2, round=2, model_version=3, training=training, deadline=float("inf"))

    async def download_model(self, version: int, deadline: float | None = None) -> Model:
        raise self.download_error


class NeverTrains:
    async def train(self, task: Task, weights: Vector) -> LocalResult | None:
        raise AssertionError("the download failed: nothing to train")

    async def evaluate(self, task: Task, weights: Vector) -> EvalResult | None:
        raise AssertionError("no evaluation task was given")


def test_an_agent_whose_run_fails_notes_what_it_was_doing() -> None:
    agent = DeviceAgent(cast(DeviceClient, FakeClient(TimeoutError())), NeverTrains())
    with pytest.raises(TimeoutError) as failure:
        asyncio.run(agent.run())
    assert failure.value.__notes__ == ["while downloading model version 3 for round 2"]
    assert describe_failure(failure.value) == "TimeoutError (no message) while downloading model version 3 for round 2"
    assert agent.stats.check_ins == 1 and agent.stats.trained == 0


@pytest.mark.parametrize("error", [TimeoutError(), asyncio.CancelledError()], ids=["timeout", "cancelled"])
def test_a_failed_agent_in_a_fleet_is_described_with_what_it_was_doing(error: BaseException) -> None:
    """As in `run_fleet`: each agent is one task of a gather. A task that ends in CancelledError hands gather a
    new, bare CancelledError (the note is lost), so the agent's `doing` fills in."""
    agent = DeviceAgent(cast(DeviceClient, FakeClient(error)), NeverTrains())

    async def fleet() -> BaseException:
        (outcome,) = await asyncio.gather(agent.run(), return_exceptions=True)
        assert isinstance(outcome, BaseException)
        return outcome

    outcome = asyncio.run(fleet())
    assert type(outcome) is type(error)
    assert describe_failure(outcome, agent.doing) == (
        f"{type(error).__name__} (no message) while downloading model version 3 for round 2"
    )

"""Once the job is over, every device must hear it from whichever aggregator process answers: the farewell's
rules, and an aggregator restarted on a finished run that tells DONE to whoever asks instead of exiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_harness import Harness, Pki, join, make_job, make_pki, running, wait_task

from fedfleet.aggregator.farewell import Farewell
from fedfleet.device.client import AggregatorError, Capabilities, Task
from fedfleet.proto.refusals import Refusal


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def test_the_window_is_a_task_deadline_in_wall_seconds_plus_the_linger() -> None:
    job = make_job(name="window")  # roundDeadlineSeconds: 600
    farewell = Farewell.for_job(job.spec, time_scale=0.01, linger_seconds=2.0, fleet_size=10, saw_every_device=True)
    assert farewell.window_seconds == pytest.approx(2.0 + 600 * 0.01)
    assert farewell.over(elapsed=8.0, told=0, every_known_device_told=False)
    assert not farewell.over(elapsed=7.9, told=0, every_known_device_told=False)


@pytest.mark.parametrize(
    ("saw_every_device", "told", "every_known_device_told", "over"),
    [
        (True, 3, True, True),  # this process ran every round and told everyone who checked in
        (True, 3, False, False),  # a device that checked in (e.g. it dropped out of the last round) has not asked
        (False, 3, True, False),  # restarted on a checkpoint: whoever took part before may still be on the way
        (False, 10, True, True),  # the whole planned fleet has heard it
        (True, 10, False, True),
    ],
)
def test_the_farewell_ends_early_only_when_nobody_can_still_be_waiting(
    saw_every_device: bool, told: int, every_known_device_told: bool, over: bool
) -> None:
    farewell = Farewell(window_seconds=60.0, fleet_size=10, saw_every_device=saw_every_device)
    assert farewell.over(elapsed=1.0, told=told, every_known_device_told=every_known_device_told) is over


def test_a_farewell_needs_a_fleet_and_a_window() -> None:
    with pytest.raises(ValueError, match="fleet_size >= 1"):
        Farewell(window_seconds=1.0, fleet_size=0, saw_every_device=True)
    with pytest.raises(ValueError, match="window_seconds >= 0"):
        Farewell(window_seconds=-1.0, fleet_size=1, saw_every_device=True)


async def finish_one_round(h: Harness) -> None:
    devices = [h.client(f"dev-{i}") for i in range(2)]
    for device in devices:
        await join(device)
    tasks = await asyncio.gather(*(wait_task(d) for d in devices))
    model = await devices[0].download_model(tasks[0].model_version)
    for device, task in zip(devices, tasks, strict=True):
        await device.upload_update(task, model.weights * 0, 20, 0.5, model.layout)
    assert await h.finished()


def test_an_aggregator_restarted_on_a_finished_run_tells_every_device_done(tmp_path: Path, pki: Pki) -> None:
    job = make_job(name="finished", rounds=1, clients=2)

    async def scenario() -> None:
        async with running(job, tmp_path, pki) as first:
            await finish_one_round(first)
        # The process that ran the job is gone (as after a kill); the next one starts on the finished run.
        restarted = Harness(job, tmp_path, pki, fleet_size=3)
        await restarted.start()
        try:
            assert await restarted.finished(), "a finished run is complete at once"
            assert not restarted.app.saw_every_device
            farewell = asyncio.create_task(restarted.app.linger())
            await asyncio.sleep(0.2)
            assert not farewell.done(), "it keeps answering instead of exiting at once"

            # A device back after the end, unknown to this process: DONE, not "check in first".
            back = restarted.client("dev-0")
            assert (await back.next_task(wait_seconds=5.0)).kind == "done"
            # One that checks in hears it in the answer.
            late = restarted.client("dev-1")
            assert (await late.check_in(consent=True, capabilities=Capabilities(train_examples=20))).job_done
            assert restarted.app.hub.told_done == 2
            # An update after the end is refused as late, saying why.
            model = await late.download_model(1)
            with pytest.raises(AggregatorError) as refused:
                await late.upload_update(Task("train", 2, round=1, model_version=1), model.weights * 0, 20, 0.5,
                                         model.layout)  # fmt: skip
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert refused.value.reason == Refusal.ROUND_CLOSED and "the job is done" in refused.value.message
            assert not farewell.done(), "the third device of the planned fleet may still come"

            third = restarted.client("dev-2")
            assert (await third.next_task(wait_seconds=5.0)).kind == "done"
            await asyncio.wait_for(farewell, 10.0)  # the whole planned fleet has heard it
        finally:
            await restarted.close()

    asyncio.run(scenario())

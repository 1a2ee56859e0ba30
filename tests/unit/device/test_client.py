"""How a device's calls treat an aggregator that is slow, restarting or gone: a try that runs out of time is
followed by a longer one, tries go out at once after a try that already waited, and only the aggregator's
silence for the whole `give_up_after` ends a call for good. On an injected clock: the calls stand in for the
aggregator (answering after a set time, or never), so nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest

from fedfleet.device.client import AggregatorError, AggregatorUnreachable, DeviceClient
from fedfleet.device.retry import Backoff

T = TypeVar("T")
TARGET = "127.0.0.1:9"  # never dialled: the calls under test stand in for the aggregator
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Aggregator:
    """Answers a try once `answer_after` seconds have passed in it; a try given less runs out of time then.
    `answer_after=None`: it never answers (down, or the link is)."""

    def __init__(self, time: FakeTime, answer_after: float | None, fail_fast: grpc.StatusCode | None = None) -> None:
        self.time = time
        self.answer_after = answer_after
        self.fail_fast = fail_fast  # fail each try at once with this code instead (a dropped connection)
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float) -> str:
        self.timeouts.append(timeout)
        if self.fail_fast is not None:
            raise AggregatorError(self.fail_fast, "connection reset")
        if self.answer_after is None or timeout < self.answer_after:
            self.time.now += timeout
            raise AggregatorError(DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.time.now += self.answer_after
        return "answer"


def with_client(time: FakeTime, test: Callable[[DeviceClient], Awaitable[T]], **options: float) -> T:
    async def scenario() -> T:
        async with DeviceClient(
            TARGET,
            device_id="dev-1",
            token="t",
            root_certificates=b"",
            backoff=Backoff(initial=0.2, maximum=10.0, rng=random.Random(7)),
            clock=time.clock,
            sleep=time.sleep,
            **options,
        ) as client:
            return await test(client)

    return asyncio.run(scenario())


def test_a_slow_aggregator_is_waited_for_with_longer_tries() -> None:
    time = FakeTime()
    aggregator = Aggregator(time, answer_after=0.7)
    answer = with_client(time, lambda c: c._retrying(aggregator, expected=0.0), call_timeout=0.1, give_up_after=60)
    assert answer == "answer"
    assert aggregator.timeouts == pytest.approx([0.1, 0.2, 0.4, 0.8])
    # A try that ran out has served that much of its backoff delay (uniform below 0.2, 0.4, 0.8).
    bounds = [cap - waited for cap, waited in zip([0.2, 0.4, 0.8], [0.1, 0.2, 0.4], strict=True)]
    assert all(0 <= slept <= bound for slept, bound in zip(time.slept, bounds, strict=True))


def test_a_long_poll_gets_its_wait_plus_the_margin() -> None:
    time = FakeTime()
    aggregator = Aggregator(time, answer_after=10.5)  # the server held the poll for its 10 s, the link took 0.5
    with_client(time, lambda c: c._retrying(aggregator, expected=10.0), call_timeout=0.2, give_up_after=60)
    assert aggregator.timeouts == pytest.approx([10.2, 10.4, 10.8])


def test_an_aggregator_that_never_answers_is_given_up_on_after_exactly_the_limit() -> None:
    time = FakeTime()
    aggregator = Aggregator(time, answer_after=None)

    async def call(client: DeviceClient) -> None:
        with pytest.raises(AggregatorUnreachable) as gone:
            await client._retrying(aggregator, expected=0.0)
        assert gone.value.silent_seconds == pytest.approx(5.0)
        assert str(gone.value) == (
            "UNAVAILABLE: no answer from the aggregator at 127.0.0.1:9 for 5s (the limit is 5s); the last try "
            "ended in DEADLINE_EXCEEDED: Deadline Exceeded"
        )

    with_client(time, call, call_timeout=1.0, give_up_after=5.0)
    assert time.now == pytest.approx(5.0)
    assert aggregator.timeouts == pytest.approx([1.0, 2.0, 2.0]), "the last try is cut to the patience left"


def test_time_the_device_spent_without_calling_is_not_silence() -> None:
    time = FakeTime()

    async def call(client: DeviceClient) -> str:
        assert await client._retrying(Aggregator(time, answer_after=0.1), expected=0.0) == "answer"
        time.now += 1000.0  # training, sitting out a round: no call, so no silence
        # The aggregator restarts: tries fail for 4 of the 5 seconds of patience, then it answers.
        restarting = Aggregator(time, answer_after=None)
        with pytest.raises(AggregatorError) as deadline_passed:
            await client._retrying(restarting, deadline=time.now + 4.0)
        assert not isinstance(deadline_passed.value, AggregatorUnreachable)
        return await client._retrying(Aggregator(time, answer_after=0.1), expected=0.0)

    assert with_client(time, call, call_timeout=1.0, give_up_after=5.0) == "answer"


def test_a_refusal_is_an_answer_and_ends_the_silence() -> None:
    time = FakeTime()

    async def refuse(timeout: float) -> str:
        raise AggregatorError(grpc.StatusCode.FAILED_PRECONDITION, "not now")

    async def call(client: DeviceClient) -> str:
        with pytest.raises(AggregatorError):
            await client._retrying(Aggregator(time, answer_after=None), deadline=4.0)
        assert client.reachability.silent_for() == pytest.approx(4.0)
        with pytest.raises(AggregatorError) as refused:
            await client._retrying(refuse)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.reachability.silent_for() == 0.0
        # Four more seconds without an answer are a new silence, within the patience of five.
        with pytest.raises(AggregatorError) as again:
            await client._retrying(Aggregator(time, answer_after=None), deadline=time.now + 4.0)
        assert not isinstance(again.value, AggregatorUnreachable)
        return await client._retrying(Aggregator(time, answer_after=0.1), expected=0.0)

    assert with_client(time, call, call_timeout=1.0, give_up_after=5.0) == "answer"


def test_a_call_bounded_by_its_tasks_deadline_stops_there_with_the_last_error() -> None:
    time = FakeTime()
    aggregator = Aggregator(time, answer_after=None)

    async def call(client: DeviceClient) -> None:
        with pytest.raises(AggregatorError) as failed:
            await client._retrying(aggregator, deadline=3.0)
        assert type(failed.value) is AggregatorError and failed.value.code == DEADLINE_EXCEEDED

    with_client(time, call, give_up_after=60.0)
    assert aggregator.timeouts == [3.0], "one try, as long as the deadline allows"
    assert time.now == pytest.approx(3.0)


def test_tries_that_fail_at_once_back_off_with_growing_jittered_delays() -> None:
    time = FakeTime()
    aggregator = Aggregator(time, answer_after=None, fail_fast=UNAVAILABLE)

    async def call(client: DeviceClient) -> None:
        with pytest.raises(AggregatorUnreachable):
            await client._retrying(aggregator, expected=0.0)
        assert client.retried == {"UNAVAILABLE": len(time.slept)}

    with_client(time, call, give_up_after=30.0)
    caps = [min(10.0, 0.2 * 2**k) for k in range(len(time.slept))]
    assert all(0 <= d <= cap for d, cap in zip(time.slept, caps, strict=True))
    assert sum(time.slept) == pytest.approx(30.0), "the delays fill the patience, no more"
    assert max(time.slept) > 1.0, "the delays grew"


def test_an_impossible_call_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="call_timeout must be greater than 0"):
        with_client(FakeTime(), lambda c: asyncio.sleep(0), call_timeout=0.0)

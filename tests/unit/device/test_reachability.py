"""The aggregator's silence as a device measures it, and the deadline of each try of a call."""

from __future__ import annotations

import pytest

from fedfleet.device.reachability import Reachability, TryTimeouts


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_silence_starts_at_the_first_unanswered_try_not_at_the_last_answer() -> None:
    clock = Clock()
    reach = Reachability(give_up_after=10.0, clock=clock)
    reach.answered()
    clock.now += 1000.0  # the device trained and sent nothing: not the aggregator's silence
    assert reach.silent_for() == 0.0 and reach.patience_left() == 10.0
    reach.unanswered(try_started=clock.now)
    clock.now += 4.0
    reach.unanswered(try_started=clock.now - 1.0)  # a later try does not move the start
    assert reach.silent_for() == 4.0 and reach.patience_left() == 6.0 and not reach.exhausted()
    clock.now += 6.0
    assert reach.exhausted() and reach.patience_left() == 0.0


def test_any_answer_ends_a_silence() -> None:
    clock = Clock()
    reach = Reachability(give_up_after=10.0, clock=clock)
    reach.unanswered(try_started=clock.now)
    clock.now += 9.0
    reach.answered()
    clock.now += 9.0
    assert reach.silent_for() == 0.0 and not reach.exhausted()


def test_a_try_waits_what_the_server_may_take_plus_a_margin_that_doubles_when_it_ran_out() -> None:
    timeouts = TryTimeouts(expected=2.0, margin=0.5)
    observed = []
    for _ in range(4):
        observed.append(timeouts.next())
        timeouts.ran_out()
    assert observed == [2.5, 3.0, 4.0, 6.0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Reachability(give_up_after=0.0, clock=Clock()), "give_up_after must be greater than 0"),
        (lambda: TryTimeouts(expected=-1.0, margin=1.0), "expected >= 0 and margin > 0"),
        (lambda: TryTimeouts(expected=0.0, margin=0.0), "expected >= 0 and margin > 0"),
    ],
)
def test_impossible_settings_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]

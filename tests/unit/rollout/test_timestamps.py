"""Moments in the rollout's status: RFC 3339 to the second, and never recorded earlier than they were."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fedfleet.rollout.timestamps import epoch, rfc3339, whole_seconds


def test_rfc3339_in_utc() -> None:
    assert rfc3339(1_800_000_000.0) == "2027-01-15T08:00:00Z"
    assert epoch("2027-01-15T08:00:00Z") == 1_800_000_000.0


def test_anything_else_reads_as_absent() -> None:
    for text in (None, "", "2027-01-15", "2027-01-15T08:00:00+01:00", "2027-01-15T08:00:00.5Z", "soon"):
        assert epoch(text) is None


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_whole_seconds_are_never_earlier_and_survive_the_round_trip(now: float) -> None:
    recorded = whole_seconds(now)
    assert now <= recorded <= now + 1 and recorded.is_integer()
    assert epoch(rfc3339(recorded)) == recorded

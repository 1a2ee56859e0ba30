"""Action annotations: each request parses back to its action; anything else is an error naming the annotation."""

from __future__ import annotations

import pytest

from fedfleet.api.rollout_actions import ACTION_ANNOTATION, Action, ActionError, new_request, parse_request


@pytest.mark.parametrize("action", list(Action))
def test_round_trip(action: Action) -> None:
    request = new_request(action)
    assert parse_request(request.annotation_value()) == request


def test_each_request_is_new() -> None:
    assert new_request(Action.PROMOTE) != new_request(Action.PROMOTE)


@pytest.mark.parametrize("value", ["", "promote", "promote/", "explode/1", "promote/../../x", "promote/" + "a" * 65])
def test_bad_values_name_the_annotation(value: str) -> None:
    with pytest.raises(ActionError, match=ACTION_ANNOTATION):
        parse_request(value)

"""Durations in Go's notation: one parser, one pattern, the same bounds in the models and in the CRD's CEL."""

from __future__ import annotations

import re

import celpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from fedfleet.api.duration import (
    DURATION_PATTERN,
    MAX_DURATION_CHARS,
    MAX_DURATION_SECONDS,
    Duration,
    DurationError,
    Interval,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2m30s500ms", 150.5),
        ("30s1m", 90.0),  # Go reads terms in any order, and so does CEL's duration()
        ("168h", float(MAX_DURATION_SECONDS)),
    ],
)
def test_go_durations_are_read_as_go_reads_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "30", "s", "1d", "-5s", "+5s", "1h 30m", " 30s", "30S", "1.h", ".5s", "5us", "0x10s", "1e3s", "٣s"]
)
def test_anything_else_is_refused_saying_what_a_duration_is(text: str) -> None:
    with pytest.raises(DurationError, match="must be a duration like 500ms, 30s, 5m or 1h30m"):
        parse_duration(text)


def test_longer_than_a_week_is_refused_naming_the_limit() -> None:
    with pytest.raises(DurationError, match="must be at most 168h"):
        parse_duration("168h1s")
    with pytest.raises(DurationError, match="must be at most 168h"):
        parse_duration("999999999h")


def test_a_huge_text_is_refused_unparsed() -> None:
    with pytest.raises(DurationError):
        parse_duration("1s" * 10_000)


@settings(deadline=None)  # the machine may be busy: no deadline per example
@given(st.text(alphabet="0123456789.hmsu -", max_size=MAX_DURATION_CHARS + 4))
def test_the_parser_and_the_crd_pattern_agree(text: str) -> None:
    # The CRD carries DURATION_PATTERN (RE2 in the API server; this pattern means the same in Python's re).
    by_pattern = len(text) <= MAX_DURATION_CHARS and re.fullmatch(DURATION_PATTERN, text) is not None
    try:
        seconds = parse_duration(text)
    except DurationError:
        assert not by_pattern or _seconds_by_cel(text) > MAX_DURATION_SECONDS
    else:
        assert by_pattern
        assert seconds == pytest.approx(_seconds_by_cel(text))


_ENV = celpy.Environment()
_DURATION = _ENV.program(_ENV.compile("duration(d)"))


def _seconds_by_cel(text: str) -> float:
    """What CEL's duration(), the function the CRD's bound checks call, makes of the text."""
    return float(_DURATION.evaluate({"d": celpy.celtypes.StringType(text)}).total_seconds())


class _Pause(BaseModel):
    duration: Duration


class _Metric(BaseModel):
    interval: Interval


def test_the_field_types_check_pattern_and_bounds_with_clear_messages() -> None:
    assert _Pause(duration="0s").duration == "0s"  # a pause may be empty
    assert _Metric(interval="1s").interval == "1s"
    for model, text, message in [
        (_Pause, "8d", "must be a duration like 500ms, 30s, 5m or 1h30m"),
        (_Pause, "169h", "must be at most 168h"),
        (_Metric, "500ms", "must be at least 1s"),
        (_Metric, "0s", "must be at least 1s"),
    ]:
        field = next(iter(model.model_fields))
        with pytest.raises(ValidationError) as caught:
            model.model_validate({field: text})
        (error,) = caught.value.errors()
        assert error["loc"] == (field,) and message in error["msg"], error


def test_the_crd_bound_rules_say_what_the_models_say() -> None:
    # The CEL rules the CRD gets for each field, evaluated by a CEL interpreter, refuse exactly the values
    # the models refuse for their bounds.
    for model in (_Pause, _Metric):
        field = next(iter(model.model_fields))
        rules = model.model_json_schema()["properties"][field]["x-kubernetes-validations"]
        for text in ("0s", "500ms", "1s", "5m", "168h", "168h1ms", "200h"):
            by_cel = all(
                bool(_ENV.program(_ENV.compile(rule["rule"])).evaluate({"self": celpy.celtypes.StringType(text)}))
                for rule in rules
            )
            try:
                model.model_validate({field: text})
                by_model = True
            except ValidationError:
                by_model = False
            assert by_cel == by_model, (model.__name__, text)

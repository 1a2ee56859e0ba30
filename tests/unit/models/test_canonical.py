"""One spelling per value: canonical JSON, padded base64 and RFC 3339 UTC times, and what is refused."""

from __future__ import annotations

import datetime as dt

import pytest

from fedfleet.models.canonical import (
    b64decode,
    b64encode,
    canonical_json,
    format_time,
    parse_canonical_json,
    parse_time,
)


def test_canonical_json_sorts_keys_drops_spaces_and_keeps_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1.5, None, "é"]}) == '{"a":[1.5,null,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b'{"a": 1}', "not canonical"),
        (b'{"b":1,"a":2}', "not canonical"),
        (b'{"a":1.0e0}', "not canonical"),
        (b'{"a":"\\u00e9"}', "not canonical"),
        (b'{"a":NaN}', "not valid JSON"),
        (b'{"a":Infinity}', "not valid JSON"),
        (b'{"a":"\\ud800"}', "not valid JSON"),  # a lone surrogate has no UTF-8 spelling
        (b"\xff", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b"", "not valid JSON"),
    ],
)
def test_parse_canonical_json_refuses_other_spellings(data: bytes, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        parse_canonical_json(data, "thing")


def test_parse_canonical_json_reads_its_own_output() -> None:
    value = {"z": [1, 2.5, {"k": None}], "a": "ü"}
    assert parse_canonical_json(canonical_json(value), "thing") == value


def test_base64_round_trips_and_refuses_non_canonical_text() -> None:
    for data in (b"", b"\x00", b"ab", b"\xff" * 33):
        assert b64decode(b64encode(data)) == data
    for text in ("AQ", "AR==", "AQ==\n", "A Q==", "-_8=", "AQ=="[:3]):
        with pytest.raises(ValueError, match="canonical padded base64"):
            b64decode(text)


def test_times_are_utc_to_the_second_and_only_that_form_is_read() -> None:
    moment = dt.datetime(2026, 11, 29, 19, 41, 46, 999, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert format_time(moment) == "2026-11-29T17:41:46Z"
    assert parse_time("2026-11-29T17:41:46Z") == dt.datetime(2026, 11, 29, 17, 41, 46, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(dt.datetime(2026, 1, 1))  # naive: the point of the test
    for text in ("2026-11-29T17:41:46+00:00", "2026-11-29 17:41:46Z", "2026-13-01T00:00:00Z", 5):
        with pytest.raises(ValueError):
            parse_time(text)

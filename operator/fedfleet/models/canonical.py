"""The one accepted spelling of each value in signed and content-addressed formats: JSON, base64, times.

A digest or a signature covers bytes, not meaning. If the same record could be spelled two ways, two
different byte strings would stand for it — a signed record could be re-spelled and still be "the same", and
the same model could get two digests. So the formats here have exactly one spelling, and readers refuse the
others instead of normalising them. Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from typing import Any

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
#: RFC 3339 in UTC with a "Z" and whole seconds: what `format_time` writes, and the only form read back.
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN or infinities (JSON has none; Python would write them)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def parse_canonical_json(data: bytes, what: str) -> Any:
    """Parse JSON that must be in its canonical spelling; ValueError naming `what` otherwise.

    Deeply nested input makes the parser recurse; that RecursionError is a refusal like any other.
    """
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints longer than Python converts
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    try:
        canonical = canonical_json(value)
    except (ValueError, RecursionError):
        raise ValueError(f"{what} is not valid JSON") from None
    if canonical != data:
        raise ValueError(f"{what} is not canonical JSON (sorted keys, no spaces, UTF-8)")
    return value


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Standard padded base64 in its one spelling: no whitespace, no missing padding, no spare bits set."""
    if not isinstance(text, str) or not _BASE64.fullmatch(text) or len(text) % 4:
        raise ValueError("not canonical padded base64")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not canonical padded base64") from None
    if b64encode(data) != text:
        raise ValueError("not canonical padded base64")
    return data


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC to the second, e.g. 2026-11-29T17:41:46Z. Naive datetimes are refused: a time
    without a zone means something different on every machine that reads it."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> dt.datetime:
    if not isinstance(text, str) or not _RFC3339_UTC.fullmatch(text):
        raise ValueError("must be an RFC 3339 UTC time like 2026-11-29T17:41:46Z")
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a real date and time") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")

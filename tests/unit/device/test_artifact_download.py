"""A partial download never holds more than the signed size, refuses what a correct stream never sends, and
keeps what it has for a resume."""

from __future__ import annotations

import pytest

from fedfleet.device.artifact_download import MAX_CHUNK_BYTES, DownloadLimits, DownloadRefused, PartialDownload


def test_chunks_add_up_to_the_artifact() -> None:
    partial = PartialDownload("sha256:x", 10, DownloadLimits())
    partial.add(b"abcd")
    assert partial.offset == 4 and not partial.is_complete()
    with pytest.raises(ValueError, match="has 4 of 10 bytes"):
        partial.data()
    partial.add(memoryview(b"efghij"))
    assert partial.is_complete() and partial.data() == b"abcdefghij"


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([b"abcdefgh", b"xyz"], "more than the signed size of 10 bytes"),
        ([b""], "an empty chunk at offset 0"),
        ([b"a", b"b", b"c"], "more than 2 chunks"),
    ],
    ids=["past the signed size", "empty chunk", "too many chunks"],
)
def test_a_stream_that_breaks_a_rule_is_refused(chunks: list[bytes], message: str) -> None:
    partial = PartialDownload("sha256:x", 10, DownloadLimits(max_chunks=2))
    with pytest.raises(DownloadRefused, match=message):
        for chunk in chunks:
            partial.add(chunk)
    assert partial.offset <= 10


def test_an_oversized_chunk_is_refused() -> None:
    partial = PartialDownload("sha256:x", 2 * MAX_CHUNK_BYTES, DownloadLimits(max_bytes=4 * MAX_CHUNK_BYTES))
    with pytest.raises(DownloadRefused, match="a chunk of"):
        partial.add(bytes(MAX_CHUNK_BYTES + 1))


@pytest.mark.parametrize(("size", "message"), [(0, "states 0 bytes"), (101, "more than this device's 100")])
def test_a_signed_size_the_device_cannot_take_is_refused_before_any_byte(size: int, message: str) -> None:
    with pytest.raises(DownloadRefused, match=message):
        PartialDownload("sha256:x", size, DownloadLimits(max_bytes=100))


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_bytes", 0), ("max_chunks", 0), ("attempts", 0), ("call_seconds", 0.0), ("total_seconds", float("inf"))],
)
def test_limits_are_checked(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        DownloadLimits(**{field: value})  # type: ignore[arg-type]

"""The gateway's content-addressed store: a digest always names exactly its bytes, uploads that are too big,
wrong or broken leave nothing behind, and no digest string reaches outside the store's directory."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifact_samples import sample_artifact, sample_bytes
from fedfleet.models.artifact import MAGIC, digest_of
from fedfleet.persist.artifact_store import (
    MAX_READ_CHUNK,
    ArtifactStore,
    ArtifactStoreError,
    StoreProblem,
)


def _problem(call: object, *args: object) -> StoreProblem:
    assert callable(call)
    with pytest.raises(ArtifactStoreError) as caught:
        call(*args)
    return caught.value.problem


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_put_stores_under_the_digest_and_reads_back_exactly(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = sample_bytes(seed=1)
    digest = store.put(data)
    assert digest == digest_of(data)
    assert store.has(digest) and store.size(digest) == len(data)
    assert b"".join(store.read_chunk(digest, offset, 64) for offset in range(0, len(data), 64)) == data
    assert store.digests() == [digest]
    assert store.metadata(digest) == sample_artifact(seed=1).metadata
    assert store.header(digest) == sample_artifact(seed=1).header


def test_putting_the_same_bytes_again_changes_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = sample_bytes(seed=1)
    digest = store.put(data)
    before = _files(tmp_path)
    blob = tmp_path / "sha256" / digest.removeprefix("sha256:")
    inode = blob.stat().st_ino
    assert store.put(data) == digest
    assert blob.stat().st_ino == inode  # not even rewritten
    assert store.put_stream(_chunks(data, 50), digest, 10_000) == digest
    assert _files(tmp_path) == before and blob.read_bytes() == data and store.digests() == [digest]


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_put_stream_keeps_an_artifact_that_matches_its_digest(tmp_path: Path, chunk_size: int) -> None:
    store = ArtifactStore(tmp_path)
    data = sample_bytes(seed=2)
    assert store.put_stream(_chunks(data, chunk_size), digest_of(data), len(data)) == digest_of(data)
    assert store.read_chunk(digest_of(data), 0, MAX_READ_CHUNK) == data
    assert store.metadata(digest_of(data)) == sample_artifact(seed=2).metadata


def test_an_upload_with_another_digest_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = sample_bytes(seed=2)
    claimed = digest_of(sample_bytes(seed=3))
    assert _problem(store.put_stream, _chunks(data, 100), claimed, 10_000) is StoreProblem.DIGEST_MISMATCH
    assert _files(tmp_path) == [] and not store.has(claimed)


def test_an_upload_over_its_limit_stops_reading_and_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    pulled = itertools.count()
    endless = (bytes(1000) for _ in pulled)  # a publisher that never stops sending
    assert _problem(store.put_stream, endless, "sha256:" + "0" * 64, 50_000) is StoreProblem.TOO_LARGE
    assert next(pulled) <= 52  # it stopped at the limit, not at the end of the stream
    assert _files(tmp_path) == []


def test_the_stores_own_limit_caps_what_a_caller_allows(tmp_path: Path) -> None:
    data = sample_bytes(seed=2)
    store = ArtifactStore(tmp_path, max_artifact_bytes=len(data) - 1)
    assert _problem(store.put_stream, [data], digest_of(data), 10**9) is StoreProblem.TOO_LARGE
    assert _problem(store.put, data) is StoreProblem.TOO_LARGE
    assert _files(tmp_path) == []


def test_bytes_with_the_right_digest_that_are_no_artifact_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    for junk in (b"hello", MAGIC + b"\x00\x00\x00\x02{}", sample_bytes()[:-4]):
        assert _problem(store.put_stream, [junk], digest_of(junk), 10_000) is StoreProblem.MALFORMED_ARTIFACT
        assert _problem(store.put, junk) is StoreProblem.MALFORMED_ARTIFACT
    assert _files(tmp_path) == []


def test_an_upload_interrupted_by_an_error_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = sample_bytes(seed=4)
    with pytest.raises(ConnectionResetError), store.upload(digest_of(data), 10_000) as upload:
        upload.write(data[:100])
        raise ConnectionResetError("the publisher went away")
    assert _files(tmp_path) == [] and not store.has(digest_of(data))


def test_the_upload_context_stores_chunks_written_one_by_one(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = sample_bytes(seed=4)
    with store.upload(digest_of(data), 10_000) as upload:
        for chunk in _chunks(data, 33):
            upload.write(chunk)
        assert upload.size == len(data) and not store.has(digest_of(data))  # not visible until complete
    assert store.has(digest_of(data)) and store.metadata(digest_of(data)).round == 3


def test_leftovers_of_a_killed_upload_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    ArtifactStore(tmp_path)
    leftover = tmp_path / "sha256" / f".{'a' * 64}.x1y2.tmp"
    leftover.write_bytes(b"half an upload")
    store = ArtifactStore(tmp_path)
    assert not leftover.exists() and store.digests() == []


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../../etc/passwd",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 64 + "\n",
        "sha256:" + "a" * 64 + "/../x",
        "sha512:" + "a" * 64,
        "a" * 64,
        "",
        None,
        7,
    ],
)
def test_every_operation_refuses_a_digest_that_is_not_strictly_sha256_hex(tmp_path: Path, digest: object) -> None:
    store = ArtifactStore(tmp_path / "store")
    (tmp_path / "passwd").write_bytes(b"secret")
    for call, args in [
        (store.has, (digest,)),
        (store.size, (digest,)),
        (store.read_chunk, (digest, 0, 10)),
        (store.metadata, (digest,)),
        (store.header, (digest,)),
        (store.put_stream, ([b"x"], digest, 100)),
    ]:
        assert _problem(call, *args) is StoreProblem.INVALID_DIGEST
    assert _files(tmp_path / "store") == []


def test_reads_are_bounds_checked(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = sample_bytes()
    digest = store.put(data)
    assert store.read_chunk(digest, len(data) - 5, 100) == data[-5:]  # short at the end
    assert store.read_chunk(digest, len(data), 100) == b""  # exactly at the end: nothing more
    for offset, length in [(len(data) + 1, 10), (-1, 10), (0, 0), (0, -5), (0, MAX_READ_CHUNK + 1), (0.5, 10)]:
        assert _problem(store.read_chunk, digest, offset, length) is StoreProblem.OUT_OF_RANGE
    absent = "sha256:" + "0" * 64
    for call, args in [(store.size, (absent,)), (store.read_chunk, (absent, 0, 1)), (store.metadata, (absent,))]:
        assert _problem(call, *args) is StoreProblem.NOT_FOUND
    assert not store.has(absent)


def test_digests_lists_only_blobs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    digests = sorted(store.put(sample_bytes(seed=seed)) for seed in range(3))
    (tmp_path / "sha256" / "README").write_text("not an artifact")
    (tmp_path / "sha256" / ("b" * 63)).write_bytes(b"")
    assert store.digests() == digests


def test_a_missing_or_damaged_metadata_sidecar_is_rebuilt_from_the_blob(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    digest = store.put(sample_bytes(seed=5))
    sidecar = tmp_path / "sha256" / (digest.removeprefix("sha256:") + ".metadata.json")
    expected = sample_artifact(seed=5).metadata
    original = sidecar.read_bytes()
    sidecar.write_bytes(b'{"job": "forged"}')
    assert store.metadata(digest) == expected and sidecar.read_bytes() == original
    os.unlink(sidecar)
    assert store.metadata(digest) == expected and sidecar.read_bytes() == original


def test_a_damaged_blob_is_reported_not_crashed_on(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    digest = store.put(sample_bytes(seed=5))
    blob = tmp_path / "sha256" / digest.removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes()[:20])  # a disk that lost data
    os.unlink(tmp_path / "sha256" / (digest.removeprefix("sha256:") + ".metadata.json"))
    assert _problem(store.header, digest) is StoreProblem.MALFORMED_ARTIFACT
    assert _problem(store.metadata, digest) is StoreProblem.MALFORMED_ARTIFACT

"""The published model format and the release record: exact round trips, one spelling, and refusals that name
the problem for every kind of broken or hostile input (never another exception type)."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifact_samples import SAMPLE_PARAMETERS, sample_artifact, sample_bytes, sample_metadata
from fedfleet.models.artifact import (
    MAGIC,
    MAX_HEADER_BYTES,
    PREFIX_BYTES,
    ArtifactError,
    ArtifactHeader,
    ModelArtifact,
    ModelMetadata,
    ReleaseRecord,
    SignedRelease,
    decode,
    decode_header,
    digest_of,
    encode,
)
from fedfleet.models.canonical import canonical_json

DIGEST = "sha256:" + "ab" * 32


def _envelope(header: bytes, weights: bytes, length: int | None = None) -> bytes:
    announced = len(header) if length is None else length
    return MAGIC + struct.pack(">I", announced) + header + weights


def _with_header(change: dict[str, Any], weights: bytes | None = None) -> bytes:
    """The sample artifact with fields of its header replaced (still canonical JSON)."""
    artifact = sample_artifact()
    header = artifact.header.to_dict() | change
    body = artifact.weights.astype("<f4").tobytes() if weights is None else weights
    return _envelope(canonical_json(header), body)


def _refusal(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(ArtifactError) as caught:
        decode(data, **kwargs)
    return str(caught.value)


def test_encode_then_decode_gives_back_every_field_and_weight_exactly() -> None:
    artifact = sample_artifact(seed=4)
    data = encode(artifact)
    back = decode(data)
    assert back.header == artifact.header
    np.testing.assert_array_equal(back.weights, artifact.weights)
    assert back.weights.dtype == np.float32 and not back.weights.flags.writeable
    assert encode(back) == data


def test_the_bytes_are_magic_length_canonical_json_and_little_endian_float32() -> None:
    artifact = sample_artifact(seed=2)
    data = encode(artifact)
    assert data.startswith(b"FFMODEL1")
    (length,) = struct.unpack(">I", data[8:12])
    header = json.loads(data[12 : 12 + length])
    assert data[12 : 12 + length] == json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert header["layout"] == [["out.weight", [2, 4]], ["out.bias", [2]]]
    assert header["metadata"]["created"] == "2026-11-29T17:41:46Z"
    weights = np.frombuffer(data[12 + length :], dtype="<f4")
    np.testing.assert_array_equal(weights, artifact.weights)


def test_the_same_model_always_gives_the_same_bytes_and_digest() -> None:
    first, second = sample_bytes(seed=9), sample_bytes(seed=9)
    assert first == second and digest_of(first) == digest_of(second)
    assert digest_of(first).startswith("sha256:") and len(digest_of(first)) == 7 + 64
    assert digest_of(sample_bytes(seed=10)) != digest_of(first)
    assert digest_of(sample_bytes(seed=9, job="other/job")) != digest_of(first)


def test_an_artifact_never_changes_after_it_is_made() -> None:
    weights = np.ones(SAMPLE_PARAMETERS, dtype=np.float32)
    artifact = ModelArtifact(sample_artifact().header, weights)
    weights[0] = 42.0  # the caller's array is not the artifact's
    assert artifact.weights[0] == 1.0
    with pytest.raises(ValueError):
        artifact.weights[0] = 7.0


@pytest.mark.parametrize("cut", range(0, 305, 7))
def test_every_truncation_is_refused(cut: int) -> None:
    data = sample_bytes()
    assert len(data) == 305
    message = _refusal(data[:cut])
    assert "truncated" in message or "not a fedfleet model" in message


def test_trailing_bytes_are_refused() -> None:
    assert "trailing bytes" in _refusal(sample_bytes() + b"\x00\x00\x00\x00")


def test_a_file_that_is_not_an_artifact_is_refused_by_its_magic() -> None:
    assert "not a fedfleet model" in _refusal(b"PK\x03\x04" + bytes(400))  # a torch .pt is a zip of pickles
    assert "not a fedfleet model" in _refusal(b"FFMODEL2" + sample_bytes()[8:])


@pytest.mark.parametrize("announced", [0, MAX_HEADER_BYTES + 1, 0xFFFFFFFF])
def test_a_header_length_out_of_bounds_is_refused_before_anything_is_read(announced: int) -> None:
    data = sample_bytes()
    message = _refusal(_envelope(data[12:], b"", length=announced))
    assert f"header length {announced} is outside 1..{MAX_HEADER_BYTES}" in message


def test_a_header_longer_than_the_data_is_truncated() -> None:
    data = sample_bytes()
    assert "truncated inside the header" in _refusal(_envelope(data[12:], b"", length=len(data)))


def test_an_artifact_over_the_size_limit_is_refused_before_parsing() -> None:
    data = sample_bytes()
    assert f"more than the limit of {len(data) - 1}" in _refusal(data, max_bytes=len(data) - 1)
    assert decode(data, max_bytes=len(data)).num_classes == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_naming_the_first_one(bad: float) -> None:
    weights = sample_artifact().weights.astype("<f4")
    weights[6] = bad
    message = _refusal(_with_header({}, weights.tobytes()))
    assert message.startswith("weights: value 6 is") and "finite" in message
    with pytest.raises(ArtifactError, match="value 6"):
        ModelArtifact(sample_artifact().header, weights.astype(np.float32))


def test_a_header_in_another_spelling_is_refused() -> None:
    header = sample_artifact().header.to_dict()
    weights = sample_artifact().weights.tobytes()
    spaced = json.dumps(header, sort_keys=True).encode()  # ", " and ": "
    unsorted = json.dumps(header, separators=(",", ":")).encode()
    escaped = canonical_json(header).replace(b"demo", b"\\u0064emo")
    for header_bytes in (spaced, unsorted, escaped):
        assert "not canonical JSON" in _refusal(_envelope(header_bytes, weights))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"architecture": "../../etc"}, "architecture"),
        ({"architecture": 7}, "architecture"),
        ({"image_shape": [1, 2]}, "image_shape"),
        ({"image_shape": [1, 2, 0]}, "image_shape[2]"),
        ({"image_shape": [1, True, 2]}, "image_shape[1]"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"layout": []}, "header.layout"),
        ({"layout": [["out.weight", [2, 4]], ["out.weight", [2]]]}, "appears twice"),
        ({"layout": [["out.weight", [2, -4]], ["out.bias", [2]]]}, "layout[0].shape[1]"),
        ({"layout": [["out.weight", [1] * 9]]}, "more than 8 dimensions"),
        ({"layout": [["out.weight", 8], ["out.bias", [2]]]}, "header.layout[0]"),
        ({"layout": [[["x"], [2, 4]], ["out.bias", [2]]]}, "layout[0].name"),
        ({"layout": [["", [2, 4]], ["out.bias", [2]]]}, "layout[0].name"),
        ({"layout": [["out.weight", [2, 5]], ["out.bias", [2]]]}, "truncated"),
        ({"extra": 1}, "unknown field extra"),
        ({"metadata": {}}, "missing field"),
        ({"metadata": "x"}, "header.metadata"),
    ],
)
def test_header_fields_are_checked_one_by_one(change: dict[str, Any], field: str) -> None:
    assert field in _refusal(_with_header(change))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"accuracy": 7.0}, "metadata.accuracy"),
        ({"accuracy": 1}, "metadata.accuracy"),  # an int: 1 and 1.0 would be two spellings
        ({"epsilon": -0.5}, "metadata.epsilon"),
        ({"round": -1}, "metadata.round"),
        ({"round": 1.5}, "metadata.round"),
        ({"job": ""}, "metadata.job"),
        ({"job": "a\nb"}, "metadata.job"),
        ({"source": "x" * 257}, "metadata.source"),
        ({"created": "yesterday"}, "metadata.created"),
        ({"created": "2026-02-30T00:00:00Z"}, "metadata.created"),
        ({"created": "2026-11-29T17:41:46+00:00"}, "metadata.created"),
    ],
)
def test_metadata_fields_are_checked_one_by_one(change: dict[str, Any], field: str) -> None:
    metadata = sample_metadata().to_dict() | change
    assert field in _refusal(_with_header({"metadata": metadata}))


def test_unmeasured_accuracy_and_epsilon_are_null() -> None:
    metadata = sample_metadata(accuracy=None).to_dict() | {"epsilon": None}
    assert decode(_with_header({"metadata": metadata})).metadata.epsilon is None


def test_hostile_json_is_refused_not_crashed_on() -> None:
    weights = b""
    deep = b"[" * 200_000 + b"]" * 200_000
    assert "nested too deeply" in _refusal(_envelope(deep[:MAX_HEADER_BYTES], weights))
    huge_int = b'{"num_classes":' + b"9" * 10_000 + b"}"
    assert "not valid JSON" in _refusal(_envelope(huge_int, weights))
    nan = canonical_json(sample_artifact().header.to_dict()).replace(b"0.875", b"NaN")
    assert "not valid JSON" in _refusal(_envelope(nan, sample_artifact().weights.tobytes()))
    overflow = canonical_json(sample_artifact().header.to_dict()).replace(b"0.875", b"1e999")  # parses as inf
    assert "not valid JSON" in _refusal(_envelope(overflow, sample_artifact().weights.tobytes()))
    assert "not UTF-8" in _refusal(_envelope(b'{"\xff":1}', weights))
    assert "must be an object" in _refusal(_envelope(b"[]", weights))


def test_decode_header_vets_a_prefix_against_the_full_size() -> None:
    data = sample_bytes()
    header = decode_header(data[:300], len(data))
    assert header == sample_artifact().header and header.artifact_size() == len(data)
    with pytest.raises(ArtifactError, match="trailing bytes"):
        decode_header(data[:300], len(data) + 1)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_decoding_arbitrary_bytes_raises_nothing_but_artifact_error(data: bytes) -> None:
    for candidate in (data, MAGIC + data, MAGIC + struct.pack(">I", len(data)) + data):
        with contextlib.suppress(ArtifactError):
            decode(candidate)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_mutated_artifact_decodes_to_a_valid_artifact_or_raises_artifact_error(data: st.DataObject) -> None:
    original = bytearray(sample_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(original) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            original[position] ^= data.draw(st.integers(1, 255))
        elif action == "delete":
            del original[position]
        else:
            original.insert(position, data.draw(st.integers(0, 255)))
    try:
        artifact = decode(bytes(original))
    except ArtifactError:
        return
    # What decodes is a whole, consistent artifact that encodes back to exactly these bytes.
    assert encode(artifact) == bytes(original)
    assert np.isfinite(artifact.weights).all()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["architecture", "image_shape", "num_classes", "layout", "metadata"]), _JSON)
def test_any_json_value_in_any_header_field_raises_nothing_but_artifact_error(field: str, value: Any) -> None:
    with contextlib.suppress(ArtifactError):
        decode(_with_header({field: value}))


def _record(**change: Any) -> ReleaseRecord:
    fields: dict[str, Any] = {
        "rollout": "fleet-a/mnist",
        "revision": 2,
        "version": DIGEST,
        "digest": DIGEST,
        "size": 305,
        "architecture": "logistic",
        "key_id": "ed25519:0123456789abcdef",
        "issued_at": "2026-11-29T18:00:00Z",
    }
    return ReleaseRecord(**(fields | change))


def test_a_release_record_has_one_canonical_spelling_that_round_trips() -> None:
    record = _record()
    data = record.canonical_bytes()
    assert data == canonical_json(record.to_dict())
    assert ReleaseRecord.from_canonical_bytes(data) == record
    assert ReleaseRecord.from_dict(json.loads(data)) == record
    assert record.signing_message().endswith(data) and record.signing_message() != data
    with pytest.raises(ArtifactError, match="not canonical"):
        ReleaseRecord.from_canonical_bytes(json.dumps(record.to_dict(), sort_keys=True).encode())
    with pytest.raises(ArtifactError, match="at most"):
        ReleaseRecord.from_canonical_bytes(b" " * 5000)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": "sha256:" + "cd" * 32}, "must equal release.digest"),
        ({"digest": "sha256:../../x", "version": "sha256:../../x"}, "release.version"),
        ({"digest": "sha256:" + "AB" * 32, "version": "sha256:" + "AB" * 32}, "lowercase hex"),
        ({"size": 0}, "release.size"),
        ({"revision": -1}, "release.revision"),
        ({"rollout": ""}, "release.rollout"),
        ({"architecture": "Logistic"}, "release.architecture"),
        ({"key_id": "x" * 65}, "release.key_id"),
        ({"issued_at": "2026-11-29"}, "release.issued_at"),
    ],
)
def test_release_record_fields_are_checked(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ArtifactError, match=field):
        _record(**change)


def test_a_signed_release_round_trips_through_a_dict_and_refuses_extra_or_bad_fields() -> None:
    signed = SignedRelease(_record(), bytes(range(64)))
    as_dict = signed.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict  # plain JSON: it goes into a resource's status
    assert SignedRelease.from_dict(as_dict) == signed
    with pytest.raises(ArtifactError, match="unknown field note"):
        SignedRelease.from_dict(as_dict | {"note": "x"})
    with pytest.raises(ArtifactError, match="signature"):
        SignedRelease.from_dict(as_dict | {"signature": as_dict["signature"].rstrip("=")})
    with pytest.raises(ArtifactError, match="missing field size"):
        SignedRelease.from_dict(as_dict | {"record": {k: v for k, v in as_dict["record"].items() if k != "size"}})
    with pytest.raises(ArtifactError, match="signedRelease"):
        SignedRelease.from_dict(["record", "signature"])


def test_headers_made_in_code_are_checked_like_decoded_ones() -> None:
    with pytest.raises(ArtifactError, match="weights: 3 values"):
        ModelArtifact(sample_artifact().header, np.zeros(3, dtype=np.float32))
    with pytest.raises(ArtifactError, match="1-D float32"):
        ModelArtifact(sample_artifact().header, np.zeros(SAMPLE_PARAMETERS, dtype=np.float64))
    with pytest.raises(ArtifactError, match=r"metadata\.accuracy"):
        ModelMetadata("j", 1, float("nan"), None, "2026-11-29T17:41:46Z", "s")
    with pytest.raises(ArtifactError, match="layout"):
        ArtifactHeader("logistic", (1, 2, 2), 2, (), sample_metadata())
    assert PREFIX_BYTES == 12

"""The aggregator's guarded deserializers: what parses, what is refused before parsing, and the wire scanner."""

from __future__ import annotations

import pytest

from fedfleet.aggregator.guarded_handlers import (
    MAX_TOP_LEVEL_FIELDS,
    SMALL_REQUEST_BYTES,
    Malformed,
    guarded_deserializer,
    message_limits,
    top_level_fields,
)
from fedfleet.proto import codec
from fedfleet.proto.v1 import aggregator_pb2 as pb

LAYOUT: codec.Layout = (("fc1.weight", (200, 784)), ("fc1.bias", (200,)), ("out.weight", (10, 200)))


def test_a_secure_round_with_hundreds_of_neighbours_still_parses() -> None:
    limits = message_limits(LAYOUT, max_cohort=600)
    request = pb.ShareKeysRequest(
        round=3,
        self_mask_commitment=b"c" * 32,
        shares=[pb.SealedShare(peer=i, ciphertext=b"x" * 120) for i in range(500)],
    )
    parsed = guarded_deserializer(pb.ShareKeysRequest, limits.for_method("ShareKeys"), limits.headers.get("ShareKeys"))(
        request.SerializeToString()
    )
    assert parsed == request


def test_an_upload_header_is_bounded_by_the_layout_and_data_chunks_by_the_message_size() -> None:
    limits = message_limits(LAYOUT, max_cohort=10)
    deserialize = guarded_deserializer(
        pb.UpdateChunk, limits.for_method("UploadUpdate"), limits.headers["UploadUpdate"], limits.header_rule
    )
    header = pb.UpdateChunk(header=pb.UpdateHeader(round=1, dtype="float32", layout=codec.layout_to_proto(LAYOUT)))
    assert deserialize(header.SerializeToString()) == header
    data = pb.UpdateChunk(data=b"\0" * codec.MAX_CHUNK_BYTES)
    assert deserialize(data.SerializeToString()) == data
    padded = pb.UpdateChunk(header=pb.UpdateHeader(round=1, layout=[pb.TensorSpec()] * 20_000))
    refused = deserialize(padded.SerializeToString())
    assert isinstance(refused, Malformed) and "layout needs at most" in refused.describe()


def test_small_requests_are_small() -> None:
    limits = message_limits(LAYOUT, max_cohort=10)
    check_in = guarded_deserializer(pb.CheckInRequest, limits.for_method("CheckIn"), None)
    assert isinstance(
        check_in(pb.CheckInRequest(device_id="d" * (SMALL_REQUEST_BYTES + 1)).SerializeToString()), Malformed
    )
    assert check_in(pb.CheckInRequest(device_id="dev-1").SerializeToString()) == pb.CheckInRequest(device_id="dev-1")


def test_the_wire_scanner_reads_sizes_and_refuses_what_is_not_a_message() -> None:
    chunk = pb.UpdateChunk(data=b"abc").SerializeToString()
    assert top_level_fields(chunk) == [(2, 3)]
    many = b"".join(pb.UpdateChunk(data=b"").SerializeToString() for _ in range(MAX_TOP_LEVEL_FIELDS + 1))
    for bad, words in ((many, "top-level fields"), (b"\x12\x05ab", "truncated"), (b"\xff" * 11, "varint"),
                       (b"\x00", "field number 0"), (b"\x0b", "wire type 3")):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            top_level_fields(bad)

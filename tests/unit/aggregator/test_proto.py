"""The committed generated code is what `make proto` generates now; the wire codec round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedfleet.proto import codec
from fedfleet.proto.generate import PROTOS, SOURCE_ROOT, generate, generated_files


def test_generated_code_is_current(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert len(written) == 3 * len(PROTOS)
    for proto in PROTOS:
        for name in generated_files(proto):
            fresh = (tmp_path / name).read_text()
            committed = (SOURCE_ROOT / name).read_text()
            assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"


def test_service_is_versioned() -> None:
    from fedfleet.proto.v1 import aggregator_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Aggregator"]
    assert service.full_name == "fedfleet.v1.Aggregator"
    assert {m.name for m in service.methods} == {
        "CheckIn", "GetTask", "DownloadModel", "UploadUpdate", "ReportEvaluation",
        "AdvertiseKeys", "ShareKeys", "UploadMaskedInput", "Unmask",
    }  # fmt: skip
    upload = service.methods_by_name["UploadUpdate"]
    download = service.methods_by_name["DownloadModel"]
    assert upload.client_streaming and not upload.server_streaming
    assert download.server_streaming and not download.client_streaming
    masked = service.methods_by_name["UploadMaskedInput"]
    assert masked.client_streaming and not masked.server_streaming


def test_vectors_travel_as_little_endian_float32() -> None:
    vec = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    data = bytes(codec.encode_vector(vec))
    assert data == np.array([1.5, -2.0, 3.25], dtype="<f4").tobytes()
    np.testing.assert_array_equal(codec.decode_vector(data, "float32"), vec)
    assert codec.decode_vector(np.arange(3, dtype="<f8").tobytes(), "float64").dtype == np.float64
    # Already float32: the wire bytes are a view of the vector itself, not a copy.
    assert np.shares_memory(np.frombuffer(codec.encode_vector(vec), dtype=np.float32), vec)
    with pytest.raises(ValueError, match="not one of"):
        codec.decode_vector(data, "bfloat16")
    with pytest.raises(ValueError, match="whole number"):
        codec.decode_vector(data[:-1], "float32")


def test_split_covers_the_payload_without_copies() -> None:
    data = bytes(range(256)) * 10
    parts = list(codec.split(data, 1000))
    assert [len(p) for p in parts] == [1000, 1000, 560]
    assert b"".join(parts) == data
    assert all(isinstance(p, memoryview) for p in parts)
    with pytest.raises(ValueError, match="chunk_bytes"):
        list(codec.split(data, codec.MAX_CHUNK_BYTES + 1))


def test_layout_mismatches_name_the_tensor() -> None:
    model: codec.Layout = (("fc.weight", (4, 3)), ("fc.bias", (4,)))
    assert codec.describe_layout_mismatch(model, model) is None
    assert codec.describe_layout_mismatch(model, (("fc.weight", (4, 3)), ("bias", (4,)))) == (
        "tensor 1 is named 'bias', expected 'fc.bias'"
    )
    assert "missing 'fc.bias'" in str(codec.describe_layout_mismatch(model, model[:1]))
    assert "unexpected 'extra'" in str(codec.describe_layout_mismatch(model, (*model, ("extra", (1,)))))
    assert codec.describe_shape_mismatch(model, (("fc.weight", (3, 4)), ("fc.bias", (4,)))) == (
        "tensor 'fc.weight' has shape [3, 4], expected [4, 3]"
    )
    assert codec.layout_size(model) == 16

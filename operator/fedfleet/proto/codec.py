"""How tensors travel in fedfleet.v1: flat little-endian bytes, a layout of named shapes, a SHA-256 digest.

Shared by the aggregator and the device SDK so both sides agree on the encoding by construction. Numpy only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator

import numpy as np
from numpy.typing import NDArray

from fedfleet.proto.v1 import aggregator_pb2 as pb

#: The one dtype models travel in. Updates declaring another dtype are decoded as such and then refused.
WIRE_DTYPE = "float32"
#: Dtypes a payload may declare, so that a wrong one is reported as such rather than as garbage.
DTYPES: dict[str, np.dtype[np.generic]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
}
#: Bytes per data chunk of a stream. Measured with benchmarks/bench_grpc_upload.py: large chunks amortise
#: the per-message cost of gRPC Python; beyond a few MiB nothing more is gained.
DEFAULT_CHUNK_BYTES = 1 << 20
#: The largest data chunk a peer may send; the gRPC message limit is this plus room for the envelope.
MAX_CHUNK_BYTES = 4 << 20
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (64 << 10)

Layout = tuple[tuple[str, tuple[int, ...]], ...]
"""(name, shape) of each tensor, in flat-vector order."""


def layout_size(layout: Layout) -> int:
    return sum(math.prod(shape) for _, shape in layout)


def layout_to_proto(layout: Layout) -> list[pb.TensorSpec]:
    return [pb.TensorSpec(name=name, shape=list(shape)) for name, shape in layout]


def layout_from_proto(specs: Iterable[pb.TensorSpec]) -> Layout:
    return tuple((spec.name, tuple(int(d) for d in spec.shape)) for spec in specs)


def encode_vector(vector: NDArray[np.floating]) -> memoryview:
    """The wire bytes of a flat parameter vector (little-endian float32), without a copy when it already is."""
    array = np.ascontiguousarray(vector, dtype=DTYPES[WIRE_DTYPE])
    return memoryview(array.data).cast("B")


def decode_vector(data: bytes | bytearray | memoryview, dtype: str) -> NDArray[np.generic]:
    """The flat vector the bytes hold, in the declared dtype (native byte order). ValueError if it cannot be."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    wire = DTYPES[dtype]
    if len(data) % wire.itemsize:
        raise ValueError(f"{len(data)} bytes are not a whole number of {dtype} values")
    array = np.frombuffer(data, dtype=wire)
    return array if wire.isnative else array.astype(wire.newbyteorder("="))


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def split(data: bytes | bytearray | memoryview, chunk_bytes: int) -> Iterator[memoryview]:
    """Views of consecutive chunks of `data` (no copies)."""
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be in 1..{MAX_CHUNK_BYTES}, got {chunk_bytes}")
    view = memoryview(data)
    for start in range(0, len(view), chunk_bytes):
        yield view[start : start + chunk_bytes]


def describe_layout_mismatch(expected: Layout, got: Layout) -> str | None:
    """None when the names match; otherwise a message naming the first tensor that differs."""
    if [n for n, _ in expected] == [n for n, _ in got]:
        return None
    for i, ((want, _), (have, _)) in enumerate(zip(expected, got, strict=False)):
        if want != have:
            return f"tensor {i} is named {have!r}, expected {want!r}"
    if len(got) < len(expected):
        return f"{len(got)} tensors named, expected {len(expected)} (missing {expected[len(got)][0]!r})"
    return f"{len(got)} tensors named, expected {len(expected)} (unexpected {got[len(expected)][0]!r})"


def describe_shape_mismatch(expected: Layout, got: Layout) -> str | None:
    """None when every tensor has its expected shape; else a message naming the first that does not."""
    for (name, want), (_, have) in zip(expected, got, strict=True):
        if want != have:
            return f"tensor {name!r} has shape {list(have)}, expected {list(want)}"
    return None

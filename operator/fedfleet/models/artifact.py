"""The published model format, and the signed record that releases one to the fleet.

Devices load artifacts that came over the network, so the format is data only — never a pickle, whose
loading runs code (that is what `torch.load` of an untrusted `model.pt` would risk). An artifact is

    b"FFMODEL1" | u32 big-endian header length | header: canonical UTF-8 JSON | float32 little-endian weights

The header names the architecture, the input image shape (C, H, W), the number of classes, the tensor
layout ([[name, [shape…]], …], in flat-vector order) and metadata (job, round, accuracy, ε, created, source).
The weights follow in layout order. Canonical JSON and a fixed byte order mean the same model always gives
the same bytes, so its digest ("sha256:<hex>") names it: content-addressed storage and the signed release
record both rest on that.

`decode` trusts nothing: it bounds the total size and the header length before reading them, checks the JSON
shape field by field, requires the bytes to be exactly header + 4 · Σ prod(shape) long and every weight to
be finite, and raises `ArtifactError` naming the problem for anything else. numpy and the standard library
only: the gateway and the operator use this module without torch (see `artifact_torch.py` for torch).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
from numpy.typing import NDArray

from fedfleet.models.canonical import b64decode, b64encode, canonical_json, parse_canonical_json, parse_time

MAGIC = b"FFMODEL1"
_LENGTH = struct.Struct(">I")
#: The magic and the header length: what must be read before anything else can be.
PREFIX_BYTES = len(MAGIC) + _LENGTH.size
#: A header names tensors and a few metadata fields; a megabyte is far more than any real model needs.
MAX_HEADER_BYTES = 1 << 20
#: The default bound on a whole artifact (the CNN on MNIST is 6.3 MiB).
DEFAULT_MAX_ARTIFACT_BYTES = 256 << 20
MAX_TENSORS = 1024
MAX_RANK = 8
MAX_DIMENSION = (1 << 31) - 1
MAX_IMAGE_SIDE = 1 << 16
MAX_CLASSES = 1_000_000
MAX_NAME_CHARS = 256
MAX_ROUND = (1 << 31) - 1
#: A release record is a few hundred bytes of JSON.
MAX_RECORD_BYTES = 4096
MAX_SIGNATURE_BYTES = 512
#: Written before a release record's bytes when they are signed, so that a signature over a release can
#: never be passed off as a signature over anything else the same key might one day sign.
RELEASE_SIGNING_CONTEXT = b"fedfleet.release.v1\x00"
WEIGHT_DTYPE = np.dtype("<f4")

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ARCHITECTURE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

#: A model's tensors in flat-vector order: (name, shape). The same shape as `job_model.TensorLayout`, which
#: cannot be imported from here without torch.
TensorLayout = tuple[tuple[str, tuple[int, ...]], ...]


class ArtifactError(ValueError):
    """Bytes (or values) that are not a valid model artifact or release record; the message names the field."""


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def is_digest(text: object) -> TypeGuard[str]:
    """True for "sha256:" and 64 lowercase hex digits, the only spelling of a digest fedfleet writes."""
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


def check_digest(text: object, field: str = "digest") -> str:
    if not is_digest(text):
        raise ArtifactError(f"{field}: must be 'sha256:' followed by 64 lowercase hex digits")
    return text


@dataclass(frozen=True)
class ModelMetadata:
    """Where a model came from. `accuracy` (on the server's held-out data) and `epsilon` (the privacy
    budget spent) are None when not measured, e.g. for a model trained elsewhere and published by hand."""

    job: str
    round: int
    accuracy: float | None
    epsilon: float | None
    created: str  # RFC 3339 UTC, e.g. 2026-11-29T17:41:46Z (models.canonical.format_time)
    source: str  # what produced the file: an aggregator, `fedfleet run`, a path given to `fedfleet publish`

    def __post_init__(self) -> None:
        _check_text(self.job, "metadata.job")
        _check_text(self.source, "metadata.source")
        _check_int(self.round, "metadata.round", 0, MAX_ROUND)
        if self.accuracy is not None and not (_is_float(self.accuracy) and 0.0 <= self.accuracy <= 1.0):
            raise ArtifactError("metadata.accuracy: must be a float in [0, 1] or null")
        if self.epsilon is not None and not (_is_float(self.epsilon) and 0.0 <= self.epsilon < math.inf):
            raise ArtifactError("metadata.epsilon: must be a finite non-negative float or null")
        try:
            parse_time(self.created)
        except ValueError as exc:
            raise ArtifactError(f"metadata.created: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "round": self.round,
            "accuracy": self.accuracy,
            "epsilon": self.epsilon,
            "created": self.created,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "metadata") -> ModelMetadata:
        fields = _exact_keys(data, where, ("job", "round", "accuracy", "epsilon", "created", "source"))
        return cls(**fields)


@dataclass(frozen=True)
class ArtifactHeader:
    """Everything in an artifact but its weights."""

    architecture: str
    image_shape: tuple[int, int, int]
    num_classes: int
    layout: TensorLayout
    metadata: ModelMetadata

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or not _ARCHITECTURE.fullmatch(self.architecture):
            raise ArtifactError("architecture: must be 1..64 of a-z, 0-9, '_', '.', '-', starting alphanumeric")
        if not isinstance(self.image_shape, tuple) or len(self.image_shape) != 3:
            raise ArtifactError("image_shape: must be [channels, height, width]")
        for index, side in enumerate(self.image_shape):
            _check_int(side, f"image_shape[{index}]", 1, MAX_IMAGE_SIDE)
        _check_int(self.num_classes, "num_classes", 2, MAX_CLASSES)
        _check_layout(self.layout)
        if not isinstance(self.metadata, ModelMetadata):
            raise ArtifactError("metadata: must be a ModelMetadata")

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(shape) for _, shape in self.layout)

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "layout": [[name, list(shape)] for name, shape in self.layout],
            "metadata": self.metadata.to_dict(),
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_dict())

    def artifact_size(self) -> int:
        """The exact byte size of an artifact with this header."""
        return PREFIX_BYTES + len(self.encode()) + WEIGHT_DTYPE.itemsize * self.parameter_count

    @classmethod
    def from_dict(cls, data: object) -> ArtifactHeader:
        fields = _exact_keys(data, "header", ("architecture", "image_shape", "num_classes", "layout", "metadata"))
        shape = fields["image_shape"]
        if not isinstance(shape, list) or len(shape) != 3:
            raise ArtifactError("header.image_shape: must be a list [channels, height, width]")
        return cls(
            architecture=fields["architecture"],
            image_shape=(shape[0], shape[1], shape[2]),
            num_classes=fields["num_classes"],
            layout=_layout_from_json(fields["layout"]),
            metadata=ModelMetadata.from_dict(fields["metadata"], "header.metadata"),
        )


@dataclass(frozen=True, eq=False)
class ModelArtifact:
    """A model as devices receive it. `weights` is the flat float32 parameter vector in layout order, held
    read-only (a writable array given to the constructor is copied first), so an artifact never changes."""

    header: ArtifactHeader
    weights: NDArray[np.float32]

    def __post_init__(self) -> None:
        weights = self.weights
        if not isinstance(weights, np.ndarray) or weights.dtype != np.float32 or weights.ndim != 1:
            raise ArtifactError("weights: must be a 1-D float32 numpy array")
        expected = self.header.parameter_count
        if weights.size != expected:
            raise ArtifactError(f"weights: {weights.size} values, but the layout has {expected} parameters")
        _check_finite(weights)
        if weights.flags.writeable:
            weights = weights.copy()
            weights.flags.writeable = False
            object.__setattr__(self, "weights", weights)

    @property
    def architecture(self) -> str:
        return self.header.architecture

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.header.image_shape

    @property
    def num_classes(self) -> int:
        return self.header.num_classes

    @property
    def layout(self) -> TensorLayout:
        return self.header.layout

    @property
    def metadata(self) -> ModelMetadata:
        return self.header.metadata


def encode(artifact: ModelArtifact) -> bytes:
    header = artifact.header.encode()
    if len(header) > MAX_HEADER_BYTES:
        raise ArtifactError(f"header: {len(header)} bytes of JSON, more than the limit of {MAX_HEADER_BYTES}")
    weights = artifact.weights.astype(WEIGHT_DTYPE, copy=False)
    return b"".join((MAGIC, _LENGTH.pack(len(header)), header, weights.tobytes()))


def decode_header(head: bytes, total_size: int, max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES) -> ArtifactHeader:
    """The header of an artifact of `total_size` bytes whose first bytes are `head` (at least the prefix and
    the header: PREFIX_BYTES + MAX_HEADER_BYTES always suffice). Checks that the size fits the header, so a
    store can vet a streamed artifact without holding all of it."""
    if not isinstance(head, bytes):
        raise ArtifactError(f"artifact: expected bytes, got {type(head).__name__}")
    if total_size > max_bytes:
        raise ArtifactError(f"artifact: {total_size} bytes, more than the limit of {max_bytes}")
    if len(head) < PREFIX_BYTES:
        raise ArtifactError(f"artifact: truncated, {len(head)} bytes is shorter than the {PREFIX_BYTES}-byte prefix")
    if head[: len(MAGIC)] != MAGIC:
        raise ArtifactError(f"artifact: not a fedfleet model (it does not start with {MAGIC.decode()})")
    (header_length,) = _LENGTH.unpack_from(head, len(MAGIC))
    if not 0 < header_length <= MAX_HEADER_BYTES:
        raise ArtifactError(f"artifact: header length {header_length} is outside 1..{MAX_HEADER_BYTES}")
    header_end = PREFIX_BYTES + header_length
    if min(len(head), total_size) < header_end:
        raise ArtifactError(f"artifact: truncated inside the header ({header_length} bytes announced)")
    try:
        parsed = parse_canonical_json(head[PREFIX_BYTES:header_end], "header")
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
    header = ArtifactHeader.from_dict(parsed)
    expected = header_end + WEIGHT_DTYPE.itemsize * header.parameter_count
    if total_size != expected:
        problem = "truncated" if total_size < expected else "has trailing bytes"
        raise ArtifactError(
            f"artifact: {problem}: {total_size} bytes, but its header and "
            f"{header.parameter_count} float32 weights make {expected}"
        )
    return header


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES) -> ModelArtifact:
    """Parse and validate an artifact. The weights are a read-only view over `data` (bytes never change)."""
    if not isinstance(data, bytes):
        raise ArtifactError(f"artifact: expected bytes, got {type(data).__name__}")
    header = decode_header(data, len(data), max_bytes)
    offset = len(data) - WEIGHT_DTYPE.itemsize * header.parameter_count
    weights = np.frombuffer(data, dtype=WEIGHT_DTYPE, offset=offset)
    if weights.dtype != np.float32:  # a big-endian machine: native order is another dtype
        weights = weights.astype(np.float32)
        weights.flags.writeable = False
    return ModelArtifact(header, weights)


@dataclass(frozen=True)
class ReleaseRecord:
    """What the operator signs when a rollout starts: this version, these bytes, for this rollout.

    `version` is the artifact's digest (the name devices and the gateway use); `digest` and `size` are
    what the device checks its download against; `key_id` names the key that signs the record.
    """

    rollout: str  # "namespace/name" of the ModelRollout
    revision: int  # the rollout's revision: a change of spec.model starts a new one
    version: str
    digest: str
    size: int
    architecture: str
    key_id: str
    issued_at: str  # RFC 3339 UTC

    def __post_init__(self) -> None:
        _check_text(self.rollout, "release.rollout")
        _check_int(self.revision, "release.revision", 0, MAX_ROUND)
        check_digest(self.version, "release.version")
        check_digest(self.digest, "release.digest")
        if self.version != self.digest:
            raise ArtifactError("release.version: must equal release.digest (a version is named by its digest)")
        _check_int(self.size, "release.size", PREFIX_BYTES + 1, 1 << 40)
        if not isinstance(self.architecture, str) or not _ARCHITECTURE.fullmatch(self.architecture):
            raise ArtifactError("release.architecture: must be 1..64 of a-z, 0-9, '_', '.', '-'")
        _check_text(self.key_id, "release.key_id", max_chars=64)
        try:
            parse_time(self.issued_at)
        except ValueError as exc:
            raise ArtifactError(f"release.issued_at: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout": self.rollout,
            "revision": self.revision,
            "version": self.version,
            "digest": self.digest,
            "size": self.size,
            "architecture": self.architecture,
            "key_id": self.key_id,
            "issued_at": self.issued_at,
        }

    def canonical_bytes(self) -> bytes:
        """The record's one spelling: what travels next to a signature and what `signing_message` wraps."""
        return canonical_json(self.to_dict())

    def signing_message(self) -> bytes:
        return RELEASE_SIGNING_CONTEXT + self.canonical_bytes()

    @classmethod
    def from_dict(cls, data: object) -> ReleaseRecord:
        fields = _exact_keys(
            data, "release", ("rollout", "revision", "version", "digest", "size", "architecture", "key_id", "issued_at")
        )
        return cls(**fields)

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> ReleaseRecord:
        """Parse a record sent as bytes; only its canonical spelling is accepted."""
        if not isinstance(data, bytes) or len(data) > MAX_RECORD_BYTES:
            raise ArtifactError(f"release: must be at most {MAX_RECORD_BYTES} bytes of canonical JSON")
        try:
            parsed = parse_canonical_json(data, "release")
        except ValueError as exc:
            raise ArtifactError(str(exc)) from None
        return cls.from_dict(parsed)


@dataclass(frozen=True)
class SignedRelease:
    """A release record and the signature over its `signing_message()` (see `security.releases`)."""

    record: ReleaseRecord
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.record, ReleaseRecord):
            raise ArtifactError("release.record: must be a ReleaseRecord")
        if not isinstance(self.signature, bytes) or not 0 < len(self.signature) <= MAX_SIGNATURE_BYTES:
            raise ArtifactError(f"release.signature: must be 1..{MAX_SIGNATURE_BYTES} bytes")

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record.to_dict(), "signature": b64encode(self.signature)}

    @classmethod
    def from_dict(cls, data: object) -> SignedRelease:
        fields = _exact_keys(data, "signedRelease", ("record", "signature"))
        try:
            signature = b64decode(fields["signature"])
        except ValueError:
            raise ArtifactError("signedRelease.signature: must be canonical padded base64") from None
        return cls(ReleaseRecord.from_dict(fields["record"]), signature)


def _exact_keys(data: object, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The object's fields, which must be exactly `keys`: an unknown field is refused, not ignored, because
    a signed or content-addressed format has no room for what its readers do not understand."""
    if not isinstance(data, Mapping):
        raise ArtifactError(f"{where}: must be an object with fields {', '.join(keys)}")
    missing = [key for key in keys if key not in data]
    if missing:
        raise ArtifactError(f"{where}: missing field {', '.join(missing)}")
    unknown = sorted(str(key)[:64] for key in data if key not in keys)
    if unknown:
        raise ArtifactError(f"{where}: unknown field {', '.join(unknown[:5])}")
    return {key: data[key] for key in keys}


def _layout_from_json(data: object) -> TensorLayout:
    if not isinstance(data, list) or not 0 < len(data) <= MAX_TENSORS:
        raise ArtifactError(f"header.layout: must be a list of 1..{MAX_TENSORS} [name, shape] pairs")
    layout = []
    for index, entry in enumerate(data):
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], list):
            raise ArtifactError(f"header.layout[{index}]: must be [name, [dimension, ...]]")
        name, shape = entry
        if len(shape) > MAX_RANK:
            raise ArtifactError(f"header.layout[{index}].shape: more than {MAX_RANK} dimensions")
        layout.append((name, tuple(shape)))
    return tuple(layout)


def _check_layout(layout: object) -> None:
    if not isinstance(layout, tuple) or not 0 < len(layout) <= MAX_TENSORS:
        raise ArtifactError(f"layout: must be 1..{MAX_TENSORS} (name, shape) pairs")
    names: set[str] = set()
    for index, entry in enumerate(layout):
        if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[1], tuple):
            raise ArtifactError(f"layout[{index}]: must be a (name, shape) pair")
        name, shape = entry
        _check_text(name, f"layout[{index}].name")
        if name in names:
            raise ArtifactError(f"layout[{index}].name: {name!r} appears twice")
        names.add(name)
        if len(shape) > MAX_RANK:
            raise ArtifactError(f"layout[{index}].shape: more than {MAX_RANK} dimensions")
        for axis, size in enumerate(shape):
            _check_int(size, f"layout[{index}].shape[{axis}]", 1, MAX_DIMENSION)


def _check_finite(weights: NDArray[np.float32]) -> None:
    finite = np.isfinite(weights)
    if not finite.all():
        first = int(np.argmin(finite))
        raise ArtifactError(f"weights: value {first} is {weights[first]}; every weight must be finite")


def _check_text(value: object, field: str, max_chars: int = MAX_NAME_CHARS) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= max_chars or not value.isprintable():
        raise ArtifactError(f"{field}: must be 1..{max_chars} printable characters")


def _check_int(value: object, field: str, low: int, high: int) -> None:
    # bool is an int to Python, but `true` is not a number in the format.
    if type(value) is not int or not low <= value <= high:
        raise ArtifactError(f"{field}: must be an integer in {low}..{high}")


def _is_float(value: object) -> bool:
    # Floats only, so that a number has one spelling: 1 and 1.0 would be two encodings of the same metadata.
    return type(value) is float and math.isfinite(value)

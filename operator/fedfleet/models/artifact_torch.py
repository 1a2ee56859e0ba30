"""Between torch and the published format: a saved `model.pt` becomes an artifact, an artifact a module.

Kept apart from `artifact.py` so that the gateway and the operator, which only move and check artifacts,
never import torch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedfleet.models.artifact import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    ArtifactError,
    ArtifactHeader,
    ModelArtifact,
    ModelMetadata,
)
from fedfleet.models.canonical import format_time
from fedfleet.models.nets import ARCHITECTURES, Architecture, build_model, count_parameters
from fedfleet.models.params import flat_parameters, load_flat_parameters, parameter_layout

#: The fields `JobModel.save` writes.
_MODEL_FILE_KEYS = frozenset({"architecture", "image_shape", "num_classes", "round", "state_dict"})


def from_model_file(
    path: Path,
    *,
    job: str,
    source: str | None = None,
    accuracy: float | None = None,
    epsilon: float | None = None,
    round_number: int | None = None,
    created: dt.datetime | None = None,
    max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
) -> ModelArtifact:
    """The artifact of a `model.pt` written by `JobModel.save` (`fedfleet run`, the aggregator).

    The file says the architecture, input shape, classes, round and weights; what it cannot say is given
    here: the job it came from, what produced it (`source`, default "file:<name>"), the accuracy and ε
    measured by the run, and when it was made (`created`, default now). `round_number` overrides the file's.
    The file is loaded with `weights_only=True`: tensors and plain containers only, no code.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the model file: {exc.strerror or exc}") from None
    if size > max_bytes:
        raise ArtifactError(f"{path}: {size} bytes, more than the limit of {max_bytes}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a hostile or broken file raises whatever the unpickler or zip reader does
        raise ArtifactError(f"{path}: not a model file fedfleet can read: {type(exc).__name__}") from None
    architecture, image_shape, num_classes, saved_round, state_dict = _model_file_fields(saved, path)
    model = build_model(architecture, image_shape, num_classes)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise ArtifactError(f"{path}: state_dict does not fit a {architecture} on {image_shape}: {exc}") from None
    metadata = ModelMetadata(
        job=job,
        round=saved_round if round_number is None else round_number,
        accuracy=None if accuracy is None else float(accuracy),
        epsilon=None if epsilon is None else float(epsilon),
        created=format_time(created or dt.datetime.now(dt.UTC)),
        source=source or f"file:{path.name}",
    )
    return from_module(model, architecture, image_shape, num_classes, metadata)


def from_module(
    model: nn.Module,
    architecture: Architecture,
    image_shape: tuple[int, int, int],
    num_classes: int,
    metadata: ModelMetadata,
) -> ModelArtifact:
    """The artifact of a module `build_model(architecture, image_shape, num_classes)` made (its weights as
    they are now): e.g. a job's round-0 model, which exists only as a seed."""
    header = ArtifactHeader(
        architecture=architecture,
        image_shape=image_shape,
        num_classes=num_classes,
        layout=tuple(parameter_layout(model)),
        metadata=metadata,
    )
    return ModelArtifact(header, flat_parameters(model))


def to_module(artifact: ModelArtifact) -> nn.Module:
    """The artifact as a ready torch module in eval mode: what a device activates.

    The artifact's layout must be exactly the layout `build_model` gives its architecture; an artifact for a
    model this code cannot build (another architecture, another layer order) is refused, never half-loaded.
    """
    if artifact.architecture not in ARCHITECTURES:
        raise ArtifactError(
            f"architecture: {artifact.architecture!r} is not one this device can build ({', '.join(ARCHITECTURES)})"
        )
    architecture = artifact.architecture
    try:
        needed = count_parameters(architecture, artifact.image_shape, artifact.num_classes)
    except ValueError as exc:
        raise ArtifactError(f"header: {exc}") from None
    if needed != artifact.header.parameter_count:
        # Checked before building: a header naming an absurd image shape must not cost the memory it names.
        raise ArtifactError(
            f"layout: {artifact.header.parameter_count} parameters, a {architecture} for images "
            f"{artifact.image_shape} and {artifact.num_classes} classes has {needed}"
        )
    model = build_model(architecture, artifact.image_shape, artifact.num_classes)
    expected = tuple(parameter_layout(model))
    if artifact.layout != expected:
        raise ArtifactError(
            f"layout: does not match a {artifact.architecture} for images {artifact.image_shape} and "
            f"{artifact.num_classes} classes"
        )
    load_flat_parameters(model, np.asarray(artifact.weights))
    model.eval()
    return model


def _model_file_fields(
    saved: object, path: Path
) -> tuple[Architecture, tuple[int, int, int], int, int, Mapping[str, torch.Tensor]]:
    if not isinstance(saved, dict) or set(saved) != _MODEL_FILE_KEYS:
        raise ArtifactError(f"{path}: expected the fields {', '.join(sorted(_MODEL_FILE_KEYS))} of a fedfleet model")
    fields: dict[str, Any] = saved
    architecture = fields["architecture"]
    if architecture not in ARCHITECTURES:
        raise ArtifactError(f"{path}: architecture must be one of {', '.join(ARCHITECTURES)}")
    shape = fields["image_shape"]
    if not (isinstance(shape, tuple | list) and len(shape) == 3 and all(type(side) is int for side in shape)):
        raise ArtifactError(f"{path}: image_shape must be three integers (C, H, W)")
    num_classes, saved_round = fields["num_classes"], fields["round"]
    if type(num_classes) is not int or type(saved_round) is not int:
        raise ArtifactError(f"{path}: num_classes and round must be integers")
    state_dict = fields["state_dict"]
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state_dict.items()
    ):
        raise ArtifactError(f"{path}: state_dict must map parameter names to tensors")
    image_shape = (shape[0], shape[1], shape[2])
    try:
        needed = count_parameters(architecture, image_shape, num_classes)
    except ValueError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    stored = sum(value.numel() for value in state_dict.values())
    if needed != stored:
        # Checked before the model is built, so a file naming an absurd shape costs no memory.
        raise ArtifactError(f"{path}: a {architecture} on {image_shape} has {needed} parameters, the file {stored}")
    return architecture, image_shape, num_classes, saved_round, state_dict

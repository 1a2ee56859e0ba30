"""A job's model as the server knows it: the architecture, the input it takes, its initial weights, and
the file the trained model is saved to. Nothing here knows where training data comes from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedfleet.models.nets import Architecture, build_model
from fedfleet.models.params import flat_parameters, load_flat_parameters, parameter_layout
from fedfleet.models.vector import Vector
from fedfleet.persist.atomic import atomic_writer

#: A model's tensors in order: (name, shape). The wire codec checks payloads against it.
TensorLayout = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class JobModel:
    architecture: Architecture
    image_shape: tuple[int, int, int]
    num_classes: int
    init_seed: int  # the same seed gives the same initial weights on every process

    def new_model(self) -> nn.Module:
        """The model with the job's initial weights (the same on every call)."""
        return build_model(self.architecture, self.image_shape, self.num_classes, seed=self.init_seed)

    def initial_weights(self) -> Vector:
        return flat_parameters(self.new_model())

    def layout(self) -> TensorLayout:
        return tuple(parameter_layout(self.new_model()))

    def save(self, path: Path, weights: Vector, round_number: int) -> Path:
        """The final model as `fedfleet run` and the aggregator write it: architecture, input shape, classes
        and the torch state_dict, so it loads with `build_model` without the job's manifest."""
        model = self.new_model()
        load_flat_parameters(model, weights)
        with atomic_writer(path) as handle:
            torch.save(
                {
                    "architecture": self.architecture,
                    "image_shape": self.image_shape,
                    "num_classes": self.num_classes,
                    "round": round_number,
                    "state_dict": model.state_dict(),
                },
                handle,
            )
        return path

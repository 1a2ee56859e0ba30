"""Everything a job trains on, built from its spec: data split, simulated fleet, model factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.data.datasets import Dataset, load_dataset, train_test_split
from fedfleet.engine.seeding import Purpose, derive_seed
from fedfleet.models.vector import Vector
from fedfleet.models.nets import build_model
from fedfleet.models.params import flat_parameters, load_flat_parameters
from fedfleet.persist.atomic import atomic_writer
from fedfleet.sim.fleet import DeviceProfile, build_fleet


@dataclass(frozen=True)
class SimulatedTask:
    spec: FederatedJobSpec
    train: Dataset
    test: Dataset | None  # the server's held-out split; None when spec.simulation.testSamples is 0
    fleet: tuple[DeviceProfile, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {p.device_id: i for i, p in enumerate(self.fleet)})

    def new_model(self) -> torch.nn.Module:
        """The model with the job's initial weights (the same on every call)."""
        return build_model(
            self.spec.model.architecture,
            self.train.image_shape,
            self.train.num_classes,
            seed=derive_seed(self.spec.seed, Purpose.MODEL_INIT),
        )

    def initial_weights(self) -> Vector:
        return flat_parameters(self.new_model())

    def profile(self, device_id: str) -> DeviceProfile:
        return self.fleet[self._index[device_id]]

    def ordinal(self, device_id: str) -> int:
        """The device's position in the fleet: a stable key for its random streams."""
        return self._index[device_id]


def build_task(spec: FederatedJobSpec) -> SimulatedTask:
    sim = spec.simulation
    data = load_dataset(sim.dataset)
    if sim.test_samples >= len(data.y):
        raise ValueError(
            f"simulation.testSamples ({sim.test_samples}) must be smaller than the {len(data.y)} samples"
            f" of {sim.dataset}"
        )
    if sim.test_samples > 0:
        train, test = train_test_split(data, sim.test_samples, spec.seed)
    else:
        train, test = data, None
    fleet = build_fleet(spec, train.y)
    return SimulatedTask(spec=spec, train=train, test=test, fleet=tuple(fleet))


def save_model(path: Path, task: SimulatedTask, weights: Vector, round_number: int) -> Path:
    """The final model as `fedfleet run` and the aggregator write it: architecture, input shape, classes and
    the torch state_dict, so it loads with `build_model` without the job's manifest."""
    model = task.new_model()
    load_flat_parameters(model, weights)
    with atomic_writer(path) as handle:
        torch.save(
            {
                "architecture": task.spec.model.architecture,
                "image_shape": task.train.image_shape,
                "num_classes": task.train.num_classes,
                "round": round_number,
                "state_dict": model.state_dict(),
            },
            handle,
        )
    return path

"""Everything a simulated job trains on, built from its spec: the job's data split, its model, and the
simulated fleet that holds the training part. Production code never sees this: the aggregator is given the
model and the evaluation split (`aggregator.inputs`), devices bring their own data."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedfleet.aggregator.inputs import JobInputs, job_model
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.data.datasets import Dataset, job_split
from fedfleet.models.job_model import JobModel
from fedfleet.sim.fleet import DeviceProfile, build_fleet


@dataclass(frozen=True)
class SimulatedTask:
    spec: FederatedJobSpec
    model: JobModel
    train: Dataset
    test: Dataset | None  # the server's held-out split; None when spec.simulation.testSamples is 0
    fleet: tuple[DeviceProfile, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {p.device_id: i for i, p in enumerate(self.fleet)})

    def profile(self, device_id: str) -> DeviceProfile:
        return self.fleet[self._index[device_id]]

    def aggregator_inputs(self) -> JobInputs:
        """What the aggregator is told of this simulated job: its model, held-out split and fleet size."""
        return JobInputs(self.model, self.test, len(self.fleet))

    def ordinal(self, device_id: str) -> int:
        """The device's position in the fleet: a stable key for its random streams."""
        return self._index[device_id]


def build_task(spec: FederatedJobSpec) -> SimulatedTask:
    sim = spec.simulation
    train, test = job_split(sim.dataset, sim.test_samples, spec.seed)
    fleet = build_fleet(spec, train.y)
    return SimulatedTask(spec=spec, model=job_model(spec, train), train=train, test=test, fleet=tuple(fleet))

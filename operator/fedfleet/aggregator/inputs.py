"""What a production aggregator is told about its job besides the spec: the model, the held-out data it
evaluates on, and the size of the fleet it plans privacy for. It never builds a simulated fleet to find
these out; the operator (or `fedfleet run`) says them in the aggregator's configuration."""

from __future__ import annotations

from dataclasses import dataclass

from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.data.datasets import Dataset, DatasetName, job_split
from fedfleet.engine.seeding import Purpose, derive_seed
from fedfleet.models.job_model import JobModel


@dataclass(frozen=True)
class JobInputs:
    model: JobModel
    test: Dataset | None  # the server's held-out split; None: no server-side evaluation
    fleet_size: int  # devices the job's fleet is planned to have: DP's sampling rate is planned on it


def job_model(spec: FederatedJobSpec, data: Dataset) -> JobModel:
    """The job's model for inputs shaped like `data`; its initial weights follow from the job's seed."""
    return JobModel(
        spec.model.architecture, data.image_shape, data.num_classes, derive_seed(spec.seed, Purpose.MODEL_INIT)
    )


def load_inputs(spec: FederatedJobSpec, dataset: DatasetName, test_samples: int, fleet_size: int) -> JobInputs:
    _, test = job_split(dataset, test_samples, spec.seed)
    return JobInputs(job_model(spec, load_shape_reference(dataset, test)), test, fleet_size)


def load_shape_reference(dataset: DatasetName, test: Dataset | None) -> Dataset:
    """Any split of the dataset tells the model its input shape and classes."""
    if test is not None:
        return test
    train, _ = job_split(dataset, 0, 0)
    return train

"""What `fedfleet rollout` rolls out, read from files: the candidate (`--model`), the version the fleet runs
before it (`--stable`, or the job's round-0 weights) and the held-out examples the simulated devices judge
both on.

Locally a model file stands for what `spec.model` names (a FederatedJob's published model, or an artifact
published to a gateway). When the file sits in a `fedfleet run` directory whose `job.yaml` is the job
`spec.model` names, that job tells more: the round-0 weights its training started from (the stable version
when `--stable` is not given) and the test split it never trained on (the devices' held-out data). Without
it, round 0 is the architecture initialised with seed 0 and the devices evaluate on the whole data set the
model's input shape fits, which may include examples it was trained on: both versions are judged on the
same examples, so the comparison stays fair, but the figures read high. `notes` says which case applies.

Every problem is a `RolloutInputError` whose message names the flag and the rule; nothing here raises
anything else for a bad file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from fedfleet.aggregator.inputs import job_model
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.api.manifest import ManifestError, load_job
from fedfleet.api.modelrollout import ModelRollout
from fedfleet.data.datasets import DATASET_NAMES, Dataset, load_dataset
from fedfleet.models.artifact import ArtifactError, ModelArtifact, ModelMetadata, digest_of, encode
from fedfleet.models.artifact_torch import from_model_file, from_module
from fedfleet.models.job_model import JobModel
from fedfleet.models.nets import ARCHITECTURES, Architecture
from fedfleet.operator.reconcile.modelrollout import Candidate
from fedfleet.persist.run_dir import RunPaths
from fedfleet.sim.rollout_fleet import holdout_pool


class RolloutInputError(Exception):
    """A flag's file cannot be used; the message is one line naming the flag and the rule."""


@dataclass(frozen=True)
class PublishedModel:
    """A model as the gateway stores it: its artifact's bytes and what a release record says of it."""

    data: bytes
    artifact: ModelArtifact
    source: str  # for people: where it came from

    @property
    def candidate(self) -> Candidate:
        return Candidate(digest_of(self.data), len(self.data), self.artifact.architecture)

    @property
    def digest(self) -> str:
        return digest_of(self.data)


@dataclass(frozen=True)
class RolloutInputs:
    candidate: PublishedModel
    stable: PublishedModel
    holdout: Dataset  # the pool the simulated devices draw their held-out examples from
    notes: tuple[str, ...]  # what was assumed, for the output


def resolve_inputs(rollout: ModelRollout, model: Path, stable: Path | None) -> RolloutInputs:
    spec = rollout.spec
    job_name = spec.model.federated_job or rollout.metadata.name
    candidate = _from_file("--model", model, job_name)
    notes: list[str] = []
    if spec.model.artifact is not None:
        notes.append(f"{model} stands for spec.model.artifact {spec.model.artifact} (locally, a file is the model)")
    job = _job_beside(model, spec.model.federated_job)
    header = candidate.artifact.header
    init_seed: int | None = None
    if job is not None:
        holdout = _job_holdout(model, job, header.image_shape, header.num_classes)
        notes.append(f"devices evaluate on the test split of job {job.metadata.name} ({len(holdout.y)} examples)")
        if job.spec.model.architecture == header.architecture:
            init_seed = job_model(job.spec, holdout).init_seed
    else:
        holdout = _dataset_for(model, header.image_shape, header.num_classes)
        notes.append(
            f"devices evaluate on the whole {holdout.name} data set ({len(holdout.y)} examples; no job.yaml of "
            f"{job_name} beside {model} says which examples it was trained on)"
        )
    if stable is not None:
        previous = _from_file("--stable", stable, job_name)
        other = previous.artifact.header
        if (other.image_shape, other.num_classes) != (header.image_shape, header.num_classes):
            raise RolloutInputError(
                f"--stable {stable}: a model for images {other.image_shape} and {other.num_classes} classes; the "
                f"candidate (--model) is for images {header.image_shape} and {header.num_classes} classes"
            )
    else:
        previous = _round_zero(candidate.artifact, job_name, init_seed)
        notes.append(f"no --stable: the fleet starts on {previous.source}")
    return RolloutInputs(candidate, previous, holdout, tuple(notes))


def _from_file(flag: str, path: Path, job_name: str) -> PublishedModel:
    try:
        created = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    except OSError as exc:
        raise RolloutInputError(f"{flag} {path}: cannot read the model file: {exc.strerror or exc}") from None
    try:
        # `created` from the file, not the clock: the same file gives the same artifact, so the same digest.
        artifact = from_model_file(path, job=job_name, created=created)
    except ArtifactError as exc:
        message = str(exc)
        prefix = f"{path}: "
        raise RolloutInputError(f"{flag} {path}: {message.removeprefix(prefix)}") from None
    source = f"{path} ({artifact.architecture}, round {artifact.metadata.round})"
    return PublishedModel(encode(artifact), artifact, source)


def _job_beside(model: Path, job_name: str | None) -> FederatedJob | None:
    """The FederatedJob whose `fedfleet run` directory holds the model file, if it is the job spec.model names."""
    manifest = RunPaths(model.parent).manifest
    if job_name is None or not manifest.is_file():
        return None
    try:
        job = load_job(manifest)
    except ManifestError:
        return None  # not a usable job manifest: the file is taken on its own
    return job if job.metadata.name == job_name else None


def _job_holdout(model: Path, job: FederatedJob, image_shape: tuple[int, int, int], num_classes: int) -> Dataset:
    simulation = job.spec.simulation
    pool = holdout_pool(simulation.dataset, simulation.test_samples, job.spec.seed)
    if (pool.image_shape, pool.num_classes) != (image_shape, num_classes):
        raise RolloutInputError(
            f"--model {model}: a model for images {image_shape} and {num_classes} classes, but its job "
            f"{job.metadata.name} trains on {simulation.dataset} ({pool.image_shape}, {pool.num_classes} classes)"
        )
    return pool


def _dataset_for(model: Path, image_shape: tuple[int, int, int], num_classes: int) -> Dataset:
    for name in DATASET_NAMES:
        data = load_dataset(name)
        if (data.image_shape, data.num_classes) == (image_shape, num_classes):
            return data
    raise RolloutInputError(
        f"--model {model}: no bundled data set has images {image_shape} and {num_classes} classes for the devices to "
        f"evaluate on ({', '.join(DATASET_NAMES)})"
    )


def _round_zero(candidate: ModelArtifact, job_name: str, init_seed: int | None) -> PublishedModel:
    """The weights the candidate's training started from: its job's round-0 model (`init_seed`, when the job
    is known), or the architecture initialised with seed 0."""
    header = candidate.header
    architecture = _architecture(header.architecture)
    if init_seed is not None:
        what = f"the round-0 weights of job {job_name} ({architecture})"
    else:
        what = f"the round-0 weights of a {architecture} (seed 0)"
    model = JobModel(architecture, header.image_shape, header.num_classes, init_seed or 0).new_model()
    metadata = ModelMetadata(
        job=job_name, round=0, accuracy=None, epsilon=None, created=candidate.metadata.created, source="round 0"
    )
    artifact = from_module(model, architecture, header.image_shape, header.num_classes, metadata)
    return PublishedModel(encode(artifact), artifact, what)


def _architecture(name: str) -> Architecture:
    for known in ARCHITECTURES:
        if known == name:
            return known
    # from_model_file only reads the architectures it can build
    raise RolloutInputError(f"--model: architecture {name!r} is not one of {', '.join(ARCHITECTURES)}")

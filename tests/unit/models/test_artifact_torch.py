"""A trained `model.pt` becomes an artifact and the artifact becomes the same model again, bit for bit; files
that are not fedfleet models, or that would run code or cost absurd memory, are refused."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact_samples import sample_artifact
from fedfleet.data.datasets import Dataset, load_dataset, train_test_split
from fedfleet.device.training import train_local
from fedfleet.models.artifact import ArtifactError, ModelArtifact, decode, encode
from fedfleet.models.artifact_torch import from_model_file, to_module
from fedfleet.models.evaluation import evaluate
from fedfleet.models.job_model import JobModel
from fedfleet.models.params import as_tensor, load_flat_parameters
from fedfleet.models.vector import Vector

CREATED = dt.datetime(2026, 11, 29, 17, 41, 46, 123456, tzinfo=dt.UTC)


@dataclass(frozen=True)
class TrainedFile:
    job_model: JobModel
    weights: Vector
    path: Path
    test: Dataset


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedFile:
    """The 2NN trained on scikit-learn's digits for a few epochs and saved the way `fedfleet run` saves it."""
    train, test = train_test_split(load_dataset("digits"), 300, seed=0)
    job_model = JobModel("2nn", train.image_shape, train.num_classes, init_seed=11)
    initial = job_model.initial_weights()
    result = train_local(
        job_model.new_model(),
        train.x,
        train.y,
        global_weights=initial,
        epochs=5,
        batch_size=32,
        learning_rate=0.1,
        seed=0,
    )
    weights = (initial + result.delta).astype(np.float32)
    path = job_model.save(tmp_path_factory.mktemp("run") / "model.pt", weights, round_number=6)
    return TrainedFile(job_model, weights, path, test)


def _reference(trained: TrainedFile, weights: Vector) -> torch.nn.Module:
    model = trained.job_model.new_model()
    load_flat_parameters(model, weights)
    return model.eval()


def test_a_trained_model_file_round_trips_to_the_same_model(trained: TrainedFile) -> None:
    artifact = from_model_file(trained.path, job="demo/digits", accuracy=0.9, epsilon=2.5, created=CREATED)
    assert artifact.architecture == "2nn" and artifact.image_shape == (1, 8, 8) and artifact.num_classes == 10
    assert artifact.layout == trained.job_model.layout()
    np.testing.assert_array_equal(artifact.weights, trained.weights)

    module = to_module(decode(encode(artifact)))  # what a device activates after a download
    x = as_tensor(np.ascontiguousarray(trained.test.x))
    with torch.inference_mode():
        assert torch.equal(module(x), _reference(trained, trained.weights)(x))
    trained_accuracy = evaluate(module, trained.test.x, trained.test.y).accuracy
    initial_accuracy = evaluate(trained.job_model.new_model(), trained.test.x, trained.test.y).accuracy
    assert trained_accuracy > initial_accuracy + 0.3  # it really is the trained model, not the initial one
    assert not module.training


def test_metadata_comes_from_the_file_and_the_caller(trained: TrainedFile) -> None:
    artifact = from_model_file(trained.path, job="demo/digits", accuracy=0.9, epsilon=2.5, created=CREATED)
    metadata = artifact.metadata
    assert (metadata.job, metadata.round, metadata.accuracy, metadata.epsilon) == ("demo/digits", 6, 0.9, 2.5)
    assert metadata.created == "2026-11-29T17:41:46Z" and metadata.source == "file:model.pt"

    other = from_model_file(trained.path, job="x", source="aggregator/ns/x", round_number=9, created=CREATED)
    assert (other.metadata.round, other.metadata.source, other.metadata.accuracy) == (9, "aggregator/ns/x", None)


def test_the_same_file_and_metadata_give_the_same_bytes(trained: TrainedFile) -> None:
    first = encode(from_model_file(trained.path, job="demo/digits", created=CREATED))
    second = encode(from_model_file(trained.path, job="demo/digits", created=CREATED))
    assert first == second


_CALLS: list[str] = []


def _record_call(value: str) -> str:
    _CALLS.append(value)
    return value


class _RunsCodeWhenUnpickled:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_record_call, ("code ran",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"state_dict": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(ArtifactError, match="not a model file fedfleet can read"):
        from_model_file(path, job="j")
    assert _CALLS == []


def _save(path: Path, trained: TrainedFile, **change: object) -> Path:
    saved = torch.load(trained.path, weights_only=True)
    saved.update(change)
    torch.save({k: v for k, v in saved.items() if v is not None}, path)
    return path


def test_non_finite_weights_in_the_file_are_refused(trained: TrainedFile, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in torch.load(trained.path, weights_only=True)["state_dict"].items()}
    state["fc2.bias"][3] = float("nan")
    with pytest.raises(ArtifactError, match="finite"):
        from_model_file(_save(tmp_path / "m.pt", trained, state_dict=state), job="j")


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"image_shape": (1, 60_000, 60_000)}, "parameters, the file"),  # refused before allocating ~3e11 floats
        ({"num_classes": 11}, "parameters, the file"),
        ({"architecture": "resnet"}, "architecture must be one of"),
        ({"image_shape": (1, 8)}, "three integers"),
        ({"round": "6"}, "must be integers"),
        ({"round": None}, "expected the fields"),
        ({"extra": 1}, "expected the fields"),
        ({"state_dict": [1, 2]}, "map parameter names to tensors"),
        ({"state_dict": {}}, "parameters, the file"),
    ],
)
def test_a_file_that_does_not_describe_its_weights_is_refused(
    trained: TrainedFile, tmp_path: Path, change: dict[str, object], rule: str
) -> None:
    with pytest.raises(ArtifactError, match=rule):
        from_model_file(_save(tmp_path / "m.pt", trained, **change), job="j")


def test_renamed_tensors_of_the_right_size_are_refused(trained: TrainedFile, tmp_path: Path) -> None:
    state = torch.load(trained.path, weights_only=True)["state_dict"]
    renamed = {name.replace("fc1", "fcX"): value for name, value in state.items()}
    with pytest.raises(ArtifactError, match="does not fit a 2nn"):
        from_model_file(_save(tmp_path / "m.pt", trained, state_dict=renamed), job="j")


def test_missing_garbage_and_oversized_files_are_refused(trained: TrainedFile, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot read the model file"):
        from_model_file(tmp_path / "absent.pt", job="j")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"just some text, not a saved model")
    with pytest.raises(ArtifactError, match="not a model file"):
        from_model_file(garbage, job="j")
    with pytest.raises(ArtifactError, match="more than the limit of 1000"):
        from_model_file(trained.path, job="j", max_bytes=1000)


def test_to_module_builds_the_sample_and_computes_with_its_weights() -> None:
    artifact = sample_artifact(seed=5)
    module = to_module(artifact)
    image = torch.tensor([[[[0.5, -1.0], [2.0, 0.25]]]])
    weight, bias = artifact.weights[:8].reshape(2, 4), artifact.weights[8:]
    expected = weight @ image.reshape(4).numpy() + bias
    with torch.inference_mode():
        np.testing.assert_allclose(module(image)[0].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("header_change", "rule"),
    [
        ({"layout": (("w", (2, 4)), ("b", (2,)))}, "layout: does not match"),
        ({"layout": (("out.bias", (2,)), ("out.weight", (2, 4)))}, "layout: does not match"),
        ({"image_shape": (1, 60_000, 60_000)}, "layout: 10 parameters"),  # never allocates that model
        ({"architecture": "resnet"}, "not one this device can build"),
        ({"architecture": "cnn"}, "needs images of at least 4x4"),
    ],
)
def test_to_module_refuses_an_artifact_this_code_cannot_build_exactly(
    header_change: dict[str, object], rule: str
) -> None:
    artifact = sample_artifact()
    header = replace(artifact.header, **header_change)  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match=rule):
        to_module(ModelArtifact(header, artifact.weights))

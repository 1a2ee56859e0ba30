"""What `fedfleet rollout` rolls out, read from its files: the candidate, the stable version (given, or the job's
round-0 weights) and the devices' held-out data (the job's test split when its `fedfleet run` directory says
which job it is); every unusable file is a one-line error naming the flag."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from embedded_rollout_support import JOB, JOB_NAME
from fedfleet.aggregator.inputs import job_model
from fedfleet.api.manifest import load_job, parse_rollout
from fedfleet.api.modelrollout import ModelRollout
from fedfleet.data.datasets import job_split, load_dataset
from fedfleet.models.artifact import decode
from fedfleet.models.job_model import JobModel
from fedfleet.models.nets import build_model
from fedfleet.models.params import flat_parameters
from fedfleet.persist.run_dir import RunPaths
from fedfleet.runtime.rollout_inputs import RolloutInputError, resolve_inputs


def rollout(model: str = f"{{federatedJob: {JOB_NAME}}}") -> ModelRollout:
    return parse_rollout(
        f"""\
apiVersion: fedfleet.io/v1alpha1
kind: ModelRollout
metadata: {{name: demo}}
spec:
  model: {model}
  steps: [{{setWeight: 100}}]
"""
    )


def saved_model(path: Path, seed: int, image_shape: tuple[int, int, int] = (1, 28, 28)) -> Path:
    """A model file as `fedfleet run` writes it (weights of a fresh model, seeded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = JobModel("logistic", image_shape, 10, seed)
    return model.save(path, model.initial_weights(), round_number=3)


def job_run_dir(root: Path, seed: int = 11) -> Path:
    RunPaths(root).manifest.parent.mkdir(parents=True, exist_ok=True)
    RunPaths(root).manifest.write_text(JOB)
    return saved_model(RunPaths(root).model, seed)


def test_a_model_in_its_job_run_directory_is_judged_on_the_job_test_split_against_its_round_zero(
    tmp_path: Path,
) -> None:
    model = job_run_dir(tmp_path / "run")
    inputs = resolve_inputs(rollout(), model, None)

    job = load_job(RunPaths(tmp_path / "run").manifest)
    _, test = job_split("mnist5k", 600, job.spec.seed)
    assert test is not None
    np.testing.assert_array_equal(inputs.holdout.y, test.y)  # the examples the job never trained on
    np.testing.assert_array_equal(inputs.holdout.x, test.x)
    round_zero = job_model(job.spec, test).initial_weights()
    np.testing.assert_array_equal(decode(inputs.stable.data).weights, round_zero)
    candidate = decode(inputs.candidate.data)
    assert candidate.metadata.job == JOB_NAME and candidate.metadata.round == 3
    np.testing.assert_array_equal(candidate.weights, flat_parameters(build_model("logistic", (1, 28, 28), 10, 11)))
    assert inputs.candidate.digest != inputs.stable.digest
    assert any("test split of job mnist-logistic" in note for note in inputs.notes)
    assert any("no --stable" in note and "round-0 weights of job" in note for note in inputs.notes)


def test_the_same_file_gives_the_same_artifact(tmp_path: Path) -> None:
    model = job_run_dir(tmp_path / "run")
    first, second = resolve_inputs(rollout(), model, None), resolve_inputs(rollout(), model, None)
    assert first.candidate.digest == second.candidate.digest and first.stable.digest == second.stable.digest


def test_a_model_on_its_own_is_judged_on_the_whole_data_set_and_starts_from_seed_zero(tmp_path: Path) -> None:
    model = job_run_dir(tmp_path / "run")
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(model, alone)

    inputs = resolve_inputs(rollout(), alone, None)

    assert len(inputs.holdout.y) == len(load_dataset("mnist5k").y)
    seed_zero = flat_parameters(build_model("logistic", (1, 28, 28), 10, 0))
    np.testing.assert_array_equal(decode(inputs.stable.data).weights, seed_zero)
    assert any("whole mnist5k data set" in note for note in inputs.notes)


def test_a_model_named_by_artifact_is_stood_for_by_the_file_and_says_so(tmp_path: Path) -> None:
    model = saved_model(tmp_path / "model.pt", 2)
    digest = "sha256:" + "ab" * 32
    inputs = resolve_inputs(rollout(f"{{artifact: '{digest}'}}"), model, None)
    assert any(digest in note and "stands for" in note for note in inputs.notes)
    assert decode(inputs.candidate.data).metadata.job == "demo"  # no job: the rollout's name


def test_a_given_stable_model_is_used_as_it_is(tmp_path: Path) -> None:
    model = job_run_dir(tmp_path / "run")
    stable = saved_model(tmp_path / "old" / "model.pt", 4)
    inputs = resolve_inputs(rollout(), model, stable)
    np.testing.assert_array_equal(
        decode(inputs.stable.data).weights, flat_parameters(build_model("logistic", (1, 28, 28), 10, 4))
    )
    assert not any("no --stable" in note for note in inputs.notes)


@pytest.mark.parametrize(
    ("case", "flag", "rule"),
    [
        ("missing model", "--model", "cannot read the model file"),
        ("not a model", "--model", "not a model file fedfleet can read"),
        ("missing stable", "--stable", "cannot read the model file"),
        ("stable for other images", "--stable", "the candidate (--model) is for images (1, 28, 28)"),
        ("model for no bundled data set", "--model", "no bundled data set has images (1, 5, 5)"),
    ],
)
def test_an_unusable_file_is_one_line_naming_the_flag(tmp_path: Path, case: str, flag: str, rule: str) -> None:
    model = saved_model(tmp_path / "model.pt", 1)
    stable: Path | None = None
    if case == "missing model":
        model = tmp_path / "nowhere.pt"
    elif case == "not a model":
        model.write_bytes(b"just some bytes")
    elif case == "missing stable":
        stable = tmp_path / "no-stable.pt"
    elif case == "stable for other images":
        stable = saved_model(tmp_path / "digits" / "model.pt", 1, image_shape=(1, 8, 8))
    else:
        model = saved_model(tmp_path / "tiny" / "model.pt", 1, image_shape=(1, 5, 5))
    with pytest.raises(RolloutInputError) as caught:
        resolve_inputs(rollout(), model, stable)
    message = str(caught.value)
    assert message.startswith(f"{flag} ") and rule in message and "\n" not in message

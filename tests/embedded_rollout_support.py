"""What the embedded-rollout tests share: a model really trained (softmax regression on MNIST 5k, by the device
SDK's own training loop) and saved in a `fedfleet run` directory beside its job's manifest, a deliberately
degraded copy of it, and ModelRollout manifests written to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedfleet.aggregator.inputs import job_model
from fedfleet.api.manifest import load_job
from fedfleet.data.datasets import job_split
from fedfleet.device.training import train_local
from fedfleet.models.evaluation import evaluate
from fedfleet.models.job_model import JobModel
from fedfleet.models.nets import build_model
from fedfleet.models.params import flat_parameters
from fedfleet.persist.run_dir import RunPaths

JOB_NAME = "mnist-logistic"
JOB = f"""\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: {JOB_NAME}
spec:
  rounds: 1
  seed: 5
  model: {{architecture: logistic}}
  simulation: {{devices: 20, dataset: mnist5k, testSamples: 600}}
"""


def train_job_model(run_dir: Path) -> Path:
    """A `fedfleet run` directory for JOB: its manifest and a model trained on the job's own training split
    (never on its test split, which the devices evaluate on). Returns the model file."""
    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths.manifest.write_text(JOB)
    job = load_job(paths.manifest)
    train, test = job_split("mnist5k", 600, job.spec.seed)
    assert test is not None
    model = job_model(job.spec, test)
    result = train_local(
        model.new_model(),
        train.x,
        train.y,
        global_weights=model.initial_weights(),
        epochs=2,
        batch_size=20,
        learning_rate=0.1,
        seed=1,
    )
    return model.save(paths.model, model.initial_weights() + result.delta, round_number=1)


def degraded_copy(source: Path, target: Path, noise: float = 8.0, seed: int = 0) -> Path:
    """The model in `source` with Gaussian noise `noise` times its weights' spread added to every weight."""
    saved = torch.load(source, weights_only=True)
    model = build_model(saved["architecture"], tuple(saved["image_shape"]), saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    weights = flat_parameters(model)
    rng = np.random.default_rng(seed)
    noisy = weights + rng.normal(0.0, noise * float(weights.std()), size=weights.shape).astype(np.float32)
    job = JobModel(saved["architecture"], tuple(saved["image_shape"]), saved["num_classes"], 0)
    target.parent.mkdir(parents=True, exist_ok=True)
    return job.save(target, noisy, saved["round"])


def accuracy_on_test_split(model_file: Path) -> float:
    """The model's accuracy on JOB's test split."""
    saved = torch.load(model_file, weights_only=True)
    model = build_model(saved["architecture"], tuple(saved["image_shape"]), saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    _, test = job_split("mnist5k", 600, 5)
    assert test is not None
    return evaluate(model, test.x, test.y).accuracy


def rollout_manifest(
    path: Path,
    steps: str,
    *,
    min_devices: int = 3,
    interval: str = "10s",
    count: int = 2,
    selector: str = "{}",
    background: bool = True,
) -> Path:
    """A ModelRollout of JOB's model with an accuracy gate against stable and a background watch on activation
    failures; `steps` is the YAML flow list of its steps."""
    path.write_text(
        f"""\
apiVersion: fedfleet.io/v1alpha1
kind: ModelRollout
metadata:
  name: test-rollout
spec:
  model: {{federatedJob: {JOB_NAME}}}
  selector: {selector}
  analysis:
    metrics:
      - name: accuracy
        interval: {interval}
        count: {count}
        inconclusiveLimit: 1
        minReportingDevices: {min_devices}
        baseline: stable
        successCondition: "result >= baseline - 0.05"
        provider: {{builtin: {{metric: accuracy}}}}
      - name: activation-failures
        interval: {interval}
        count: {count}
        minReportingDevices: {min_devices}
        baseline: none
        failureCondition: "result > 0.01"
        provider: {{builtin: {{metric: activationFailureRate}}}}
    background: {"[activation-failures]" if background else "[]"}
  steps: {steps}
"""
    )
    return path

"""Shared helpers of the training benchmarks: build a job spec in code and run it to a target accuracy."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfleet.api.federatedjob import FederatedJob
from fedfleet.engine.records import RoundRecord
from fedfleet.runtime.local import LocalRuntime
from fedfleet.runtime.threads import configure_torch_threads


def make_job(name: str, **spec: Any) -> FederatedJob:
    return FederatedJob.model_validate(
        {"apiVersion": "fedfleet.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": name}, "spec": spec}
    )


def mcmahan_spec(
    *, epochs: int, batch: int, lr: float, rounds: int, partition: str = "iid", seed: int = 1, **overrides: Any
) -> dict[str, Any]:
    """McMahan et al. 2017 on MNIST 5k: 100 devices x 40 samples, 1000 held out, C=0.1, the 2NN."""
    spec: dict[str, Any] = {
        "rounds": rounds,
        "seed": seed,
        "model": {"architecture": "2nn"},
        "training": {"localEpochs": epochs, "batchSize": batch, "learningRate": lr},
        "cohort": {"clientsPerRound": 10},
        "evaluation": {"serverEvery": 1},
        "simulation": {
            "devices": 100,
            "dataset": "mnist5k",
            "testSamples": 1000,
            "partition": {"scheme": partition, "shardsPerDevice": 2},
        },
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


@dataclass
class RunOutcome:
    rounds_to_target: int | None
    final_accuracy: float
    best_accuracy: float
    rounds_run: int
    seconds: float


def run_to_target(job: FederatedJob, target: float | None, stop_at_target: bool = True) -> RunOutcome:
    configure_torch_threads()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runtime = LocalRuntime(job, Path(tmp))
        runtime.prepare(resume=False)
        reached: int | None = None
        best = final = 0.0

        def on_round(record: RoundRecord) -> None:
            nonlocal reached, best, final
            final = record.accuracy if record.accuracy is not None else final
            best = max(best, final)
            if target is not None and reached is None and final >= target:
                reached = record.round
                if stop_at_target:
                    runtime.request_stop()

        runtime.run(on_round)
        return RunOutcome(reached, final, best, runtime.server.round, time.perf_counter() - started)


# The learning rates McMahan et al. tuned per setting; these are the best of the grids in
# bench_mcmahan_table2.py on MNIST 5k (rerun it to re-derive them).
TABLE2_SETTINGS: dict[str, dict[str, Any]] = {
    "E=1,B=inf (FedSGD)": {"epochs": 1, "batch": 0, "lr": 0.5, "max_rounds": 400},
    "E=1,B=10": {"epochs": 1, "batch": 10, "lr": 0.3, "max_rounds": 200},
    "E=5,B=10": {"epochs": 5, "batch": 10, "lr": 0.2, "max_rounds": 100},
}


def table2_rounds(seed: int = 1, lr_grid: dict[str, list[float]] | None = None) -> dict[str, tuple[int | None, float]]:
    """Rounds to 90% test accuracy per setting (best over the lr grid), with the learning rate that got there."""
    out: dict[str, tuple[int | None, float]] = {}
    for name, setting in TABLE2_SETTINGS.items():
        best: tuple[int | None, float] = (None, setting["lr"])
        for lr in (lr_grid or {}).get(name, [setting["lr"]]):
            spec = mcmahan_spec(
                epochs=setting["epochs"], batch=setting["batch"], lr=lr, rounds=setting["max_rounds"], seed=seed
            )
            reached = run_to_target(make_job("table2", **spec), 0.90).rounds_to_target
            if reached is not None and (best[0] is None or reached < best[0]):
                best = (reached, lr)
        out[name] = best
    return out


def noniid_spec(seed: int = 1) -> dict[str, Any]:
    """Pathological non-IID: each device holds 2 label-sorted shards (McMahan et al. 2017)."""
    return mcmahan_spec(epochs=5, batch=10, lr=0.1, rounds=100, partition="shards", seed=seed)


def byzantine_spec(strategy: str, seed: int = 1) -> dict[str, Any]:
    """20% of devices send −5× their update. Cohorts of 20 so a round holds a handful of attackers."""
    extra = {"trimFraction": 0.3} if strategy == "trimmedMean" else {}
    return mcmahan_spec(
        epochs=5,
        batch=10,
        lr=0.1,
        rounds=40,
        seed=seed,
        cohort={"clientsPerRound": 20},
        aggregation={"strategy": strategy, **extra},
        simulation={"byzantine": {"fraction": 0.2, "attack": "signFlip", "scale": -5.0}},
    )

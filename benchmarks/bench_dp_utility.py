"""Benchmark (issue 5, item 4): the utility of central DP-FedAvg on MNIST 5k for ε ∈ {1, 4, 8, ∞}.

A simulated fleet of many small devices (DP-FedAvg needs large cohorts: the noise on the mean shrinks with
the number of clipped updates averaged). σ is calibrated by the accountant for the planned rounds from each
target ε; ∞ is the same job without DP. Prints one row per ε: the calibrated noise multiplier, the ε actually
spent and the final server-side test accuracy.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedfleet.runtime.local import LocalRuntime
from fedfleet.runtime.threads import configure_torch_threads
from fl_experiments import make_job


def utility_spec(epsilon: float | None, rounds: int, architecture: str) -> dict[str, Any]:
    privacy: dict[str, Any] = {}
    if epsilon is not None:
        privacy = {"differentialPrivacy": {"mode": "central", "clipNorm": 0.5, "targetEpsilon": epsilon, "delta": 1e-4}}
    return {
        "rounds": rounds,
        "seed": 1,
        "model": {"architecture": architecture},
        "training": {"localEpochs": 2, "batchSize": 0, "learningRate": 0.3},
        "cohort": {"clientsPerRound": 200},
        "aggregation": {"strategy": "fedavgm", "serverLearningRate": 1.0, "serverMomentum": 0.9},
        "evaluation": {"serverEvery": rounds},
        "simulation": {"devices": 1000, "dataset": "mnist5k", "testSamples": 1000},
        "privacy": privacy,
    }


def run(epsilon: float | None, rounds: int, architecture: str) -> tuple[float | None, float | None, float]:
    job = make_job("dp-utility", **utility_spec(epsilon, rounds, architecture))
    with tempfile.TemporaryDirectory() as tmp:
        runtime = LocalRuntime(job, Path(tmp) / "run", ledger_path=Path(tmp) / "ledger.db")
        runtime.prepare(resume=False)
        records = runtime.run()
        z = runtime.server.privacy.noise_multiplier if runtime.server.privacy else None
        accuracy = next((r.accuracy for r in reversed(records) if r.accuracy is not None), 0.0)
        return z, records[-1].epsilon, accuracy or 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--model", default="2nn", choices=["2nn", "logistic", "cnn"])
    args = parser.parse_args()
    configure_torch_threads()
    print(
        f"MNIST 5k, 1000 devices x 4 samples, 200 per round (q=0.2), {args.rounds} rounds, {args.model},"
        " clip 0.5, δ=1e-4"
    )
    print(f"{'target ε':>9} {'z':>7} {'ε spent':>8} {'accuracy':>9}")
    for epsilon in (1.0, 4.0, 8.0, None):
        z, spent, accuracy = run(epsilon, args.rounds, args.model)
        label = "∞" if epsilon is None else f"{epsilon:g}"
        z_text = "-" if z is None else f"{z:.3f}"
        spent_text = "-" if spent is None or math.isinf(spent) else f"{spent:.3f}"
        print(f"{label:>9} {z_text:>7} {spent_text:>8} {100 * accuracy:>8.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

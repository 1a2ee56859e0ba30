"""Benchmark 1: McMahan et al. 2017, Table 2 ordering on MNIST 5k (2NN, 100 devices x 40 samples, C=0.1).

Rounds to 90% test accuracy must fall as local work grows (E=1,B=∞ > E=1,B=10 > E=5,B=10), and E=5,B=10 must
get there within 30 rounds and at least 3x faster than FedSGD. Each setting uses the best learning rate of a
small grid, as in the paper; the figures are reported per seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from fl_experiments import table2_rounds

GRID = {
    "E=1,B=inf (FedSGD)": [0.2, 0.5, 1.0],
    "E=1,B=10": [0.1, 0.2, 0.3],
    "E=5,B=10": [0.05, 0.1, 0.2],
}


def check(rounds: dict[str, int | None]) -> list[str]:
    sgd, e1, e5 = (rounds[k] for k in ("E=1,B=inf (FedSGD)", "E=1,B=10", "E=5,B=10"))
    failures = []
    if None in (sgd, e1, e5):
        return [f"a setting never reached 90%: {rounds}"]
    assert sgd is not None and e1 is not None and e5 is not None
    if not sgd > e1 > e5:
        failures.append(f"ordering broken: FedSGD {sgd}, E=1,B=10 {e1}, E=5,B=10 {e5}")
    if e5 > 30:
        failures.append(f"E=5,B=10 needed {e5} rounds (bar: 30)")
    if sgd < 3 * e5:
        failures.append(f"FedSGD/E=5,B=10 = {sgd / e5:.2f} (bar: 3)")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    per_seed: dict[str, list[int]] = {k: [] for k in GRID}
    failures: list[str] = []
    for seed in args.seeds:
        result = table2_rounds(seed=seed, lr_grid=GRID)
        for name, (reached, lr) in result.items():
            print(f"seed {seed}  {name:20s} rounds to 90%: {reached}  (best lr {lr})", flush=True)
            if reached is not None:
                per_seed[name].append(reached)
        failures += [f"seed {seed}: {f}" for f in check({k: v[0] for k, v in result.items()})]
    print(
        "median rounds to 90%: " + ", ".join(f"{k} {statistics.median(v) if v else None}" for k, v in per_seed.items())
    )
    for failure in failures:
        print("FAIL", failure)
    print("PASS" if not failures else "FAIL")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

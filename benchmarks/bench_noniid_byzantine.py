"""Benchmarks 2 and 3: pathological non-IID convergence, and robustness to 20% sign-flipping attackers.

2. 2 label shards per device, E=5,B=10: 85% test accuracy within 100 rounds.
3. 20% of devices send −5x their update: FedAvg ends below 30%, median and trimmed mean at 80% or more.
"""

from __future__ import annotations

import argparse
import sys

from fl_experiments import byzantine_spec, make_job, noniid_spec, run_to_target


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    failures = []
    for seed in args.seeds:
        outcome = run_to_target(make_job("noniid", **noniid_spec(seed)), 0.85)
        print(
            f"seed {seed}  non-IID (2 shards/device) E=5,B=10: rounds to 85%: {outcome.rounds_to_target}"
            f"  ({outcome.seconds:.1f}s)",
            flush=True,
        )
        if outcome.rounds_to_target is None:
            failures.append(f"seed {seed}: non-IID never reached 85% in 100 rounds")
        for strategy, bar_ok in (
            ("fedavg", lambda a: a < 0.30),
            ("median", lambda a: a >= 0.80),
            ("trimmedMean", lambda a: a >= 0.80),
        ):
            run = run_to_target(make_job("byz", **byzantine_spec(strategy, seed)), None)
            ok = bar_ok(run.final_accuracy)
            print(
                f"seed {seed}  20% sign-flip x-5  {strategy:12s} final accuracy {100 * run.final_accuracy:.1f}%"
                f"  {'ok' if ok else 'FAIL'}",
                flush=True,
            )
            if not ok:
                failures.append(f"seed {seed}: {strategy} ended at {run.final_accuracy:.3f}")
    for failure in failures:
        print("FAIL", failure)
    print("PASS" if not failures else "FAIL")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

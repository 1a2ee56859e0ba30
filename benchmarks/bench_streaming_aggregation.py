"""Streaming FedAvg aggregation: memory must not grow with the number of updates.

    python benchmarks/bench_streaming_aggregation.py [--params 5000000] [--updates 200] [--baseline 10]

Feeds `updates` synthetic updates of `params` float32 values into the FedAvg accumulator and records the
peak memory traced by tracemalloc (numpy reports its buffers to it), then does the same with `baseline`
updates. The bar: peak(updates) <= peak(baseline) + 1.5 x one update's bytes; the process exits 1 when it
is missed. Updates are generated one at a time into one reused buffer by a seeded RNG, so generation does
not inflate memory; throughput times only the add() calls.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

from fedfleet.strategies.fedavg import FedAvg

BAR_UPDATES = 1.5  # allowed growth of the peak, in units of one update's size


def measure(params: int, updates: int, seed: int = 0) -> dict[str, Any]:
    """Aggregate `updates` random updates of `params` floats; report traced peak memory and throughput."""
    if params < 1 or updates < 1:
        raise ValueError(f"params and updates must be >= 1, got params={params}, updates={updates}")
    rng = np.random.default_rng(seed)
    buffer = np.empty(params, dtype=np.float32)  # allocated before tracing: it is the caller's, not ours
    add_seconds = 0.0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        acc = FedAvg().accumulator(params)
        for i in range(updates):
            rng.standard_normal(dtype=np.float32, out=buffer)
            started = time.perf_counter()
            acc.add(buffer, num_examples=1 + i % 50)
            add_seconds += time.perf_counter() - started
        result = acc.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data_bytes = updates * buffer.nbytes
    return {
        "params": params,
        "updates": updates,
        "update_bytes": buffer.nbytes,
        "peak_bytes": peak,
        "add_seconds": add_seconds,
        "gb_per_s": data_bytes / add_seconds / 1e9 if add_seconds > 0 else float("inf"),
        "result_finite": bool(np.isfinite(result).all()),
    }


def bar(big: dict[str, Any], small: dict[str, Any]) -> tuple[bool, int]:
    """(passed, limit): the peak with many updates may exceed the baseline by at most 1.5 updates."""
    limit = int(small["peak_bytes"] + BAR_UPDATES * small["update_bytes"])
    return big["peak_bytes"] <= limit, limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--params", type=int, default=5_000_000, help="floats per update (default 5,000,000)")
    parser.add_argument("--updates", type=int, default=200, help="updates in the measured run (default 200)")
    parser.add_argument("--baseline", type=int, default=10, help="updates in the baseline run (default 10)")
    args = parser.parse_args(argv)
    for name in ("params", "updates", "baseline"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    mib = 1024 * 1024
    small = measure(args.params, args.baseline)
    big = measure(args.params, args.updates)
    passed, limit = bar(big, small)
    print(f"update size          {small['update_bytes'] / mib:10.1f} MiB ({args.params:,} float32)")
    print(f"peak, {args.baseline:>4} updates   {small['peak_bytes'] / mib:10.1f} MiB")
    print(f"peak, {args.updates:>4} updates   {big['peak_bytes'] / mib:10.1f} MiB")
    print(f"bar                  peak({args.updates}) <= {limit / mib:.1f} MiB: {'PASS' if passed else 'FAIL'}")
    print(f"throughput           {big['gb_per_s']:10.2f} GB/s of update data ({big['add_seconds']:.2f} s in add)")
    return 0 if passed and big["result_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())

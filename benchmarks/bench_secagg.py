"""Cost of one secure-aggregation round against a plaintext sum, in memory (no network).

    nice -n 10 .venv/bin/python benchmarks/bench_secagg.py              # n ∈ {100, 500} × m ∈ {1e5, 1e6}
    nice -n 10 .venv/bin/python benchmarks/bench_secagg.py --clients 100 --length 100000      # cheapest

Each round uses the SecAgg+ parameters chosen for the dropout rate, and that share of the clients goes
silent before the given stage (default: before uploading the masked input, the costliest for the server,
which must rebuild their masking keys and regenerate their pairwise masks). Clients run one after another
in this process, so their times add up; in a fleet they run in parallel and "per client" is what a device
spends. Bytes are payload bytes per client (protobuf framing adds a few per field).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from fedfleet.privacy.secagg import Quantizer, RoundStats, SecAggConfig, Stage, run_round
from fedfleet.privacy.secagg.masking import SEED_BYTES, expand_mask
from fedfleet.privacy.secagg.quantize import MAX_QUANTIZATION_BITS
from fedfleet.privacy.secagg.ring import U64Vector


def benchmark_expand_mask(length: int = 1 << 22, modulus_bits: int = 32, repeats: int = 3) -> float:
    """Mask expansion throughput in GB/s of produced uint64 mask (best of ``repeats``)."""
    best = float("inf")
    for _ in range(repeats):
        seed = os.urandom(SEED_BYTES)
        start = time.perf_counter()
        expand_mask(seed, length, modulus_bits)
        best = min(best, time.perf_counter() - start)
    return length * 8 / best / 1e9


def finest_quantizer(n: int, modulus_bits: int) -> Quantizer:
    """The finest grid on [−1, 1] for which the sum of n inputs cannot wrap modulo 2^k."""
    bits = min(MAX_QUANTIZATION_BITS, modulus_bits - (n - 1).bit_length())
    return Quantizer(clip=1.0, bits=bits, modulus_bits=modulus_bits, max_clients=n)


class LazyInputs(Mapping[int, U64Vector]):
    """Client u's quantized update, regenerated from its seed when asked for, so the benchmark never holds
    n·m floats at once (the server keeps only the masked uploads, at wire width)."""

    def __init__(self, n: int, m: int, quantizer: Quantizer) -> None:
        self.n, self.m, self.quantizer = n, m, quantizer
        self.quantize_seconds = 0.0
        self.quantized = 0

    def floats(self, u: int) -> np.ndarray:
        return np.random.default_rng(u).normal(0.0, 0.05, self.m).astype(np.float32)

    def __getitem__(self, u: int) -> U64Vector:
        x = self.floats(u)
        start = time.perf_counter()
        q = self.quantizer.quantize(x, np.random.default_rng(10**6 + u))
        self.quantize_seconds += time.perf_counter() - start
        self.quantized += 1
        return q

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


@dataclass
class Row:
    clients: int
    length: int
    degree: int
    threshold: int
    included: int
    round_seconds: float
    server_seconds: float
    client_seconds_mean: float
    client_seconds_max: float
    quantize_seconds_per_client: float
    plaintext_sum_seconds: float
    server_over_plaintext: float
    upload_bytes_per_client: float
    download_bytes_per_client: float
    upload_over_plaintext: float
    mask_expansion_gb_per_s: float
    exact: bool


def bench(n: int, m: int, dropout: float, stage: Stage, seed: int) -> Row:
    config = SecAggConfig.create(round_id=1, num_clients=n, vector_length=m, dropout_rate=dropout)
    quantizer = finest_quantizer(n, config.modulus_bits)
    inputs = LazyInputs(n, m, quantizer)
    rng = np.random.default_rng(seed)
    silent = {int(u): stage for u in rng.choice(n, size=round(dropout * n), replace=False)}

    stats = RoundStats()
    start = time.perf_counter()
    result = run_round(config, inputs, silent_from=silent, stats=stats)
    round_seconds = time.perf_counter() - start

    # The baseline in the same run: a server adding the same clients' float32 updates in the clear.
    plain = np.zeros(m, dtype=np.float32)
    expected = np.zeros(m, dtype=np.uint64)
    plain_seconds = 0.0
    for u in sorted(result.included):
        x = inputs.floats(u)
        start = time.perf_counter()
        plain += x
        plain_seconds += time.perf_counter() - start
        expected += inputs[u]
    expected &= np.uint64(2**config.modulus_bits - 1)

    # Per-client figures over the clients that completed the round (dropouts did less work).
    client_times = [stats.client_seconds[u] for u in result.included]
    uploads = [stats.upload_bytes[u] for u in result.included]
    downloads = [stats.download_bytes[u] for u in result.included]
    return Row(
        clients=n,
        length=m,
        degree=config.degree,
        threshold=config.threshold,
        included=len(result.included),
        round_seconds=round_seconds,
        server_seconds=stats.server_seconds,
        client_seconds_mean=float(np.mean(client_times)),
        client_seconds_max=float(np.max(client_times)),
        quantize_seconds_per_client=inputs.quantize_seconds / (2 * n),  # quantized once in the round, once here
        plaintext_sum_seconds=plain_seconds,
        server_over_plaintext=stats.server_seconds / plain_seconds,
        upload_bytes_per_client=float(np.mean(uploads)),
        download_bytes_per_client=float(np.mean(downloads)),
        upload_over_plaintext=float(np.mean(uploads)) / (4 * m),
        mask_expansion_gb_per_s=benchmark_expand_mask(length=m, modulus_bits=config.modulus_bits),
        exact=bool(np.array_equal(result.total, expected)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--length", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--stage", choices=[s.name for s in Stage], default=Stage.MASKED_INPUT.name)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object per configuration")
    args = parser.parse_args()
    for n in args.clients:
        for m in args.length:
            row = bench(n, m, args.dropout, Stage[args.stage], args.seed)
            if args.json:
                print(json.dumps(asdict(row)))
                continue
            print(
                f"n={n} m={m} degree={row.degree} t={row.threshold} "
                f"included={row.included} exact={row.exact}\n"
                f"  server {row.server_seconds:.3f} s = {row.server_over_plaintext:.0f}× the plaintext sum "
                f"({row.plaintext_sum_seconds * 1e3:.1f} ms)\n"
                f"  per client {row.client_seconds_mean:.3f} s mean, {row.client_seconds_max:.3f} s max "
                f"(+ {row.quantize_seconds_per_client * 1e3:.1f} ms quantization)\n"
                f"  per client {row.upload_bytes_per_client / 1e3:.1f} kB up "
                f"({row.upload_over_plaintext:.3f}× float32 plaintext), "
                f"{row.download_bytes_per_client / 1e3:.1f} kB down\n"
                f"  mask expansion {row.mask_expansion_gb_per_s:.2f} GB/s of uint64 mask"
                f"  (round wall time {row.round_seconds:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""benchmarks/bench_secagg.py at a small size, in every test run: the secure sum is exact with 10% of the
clients gone before they upload, and every figure the benchmark prints is measured."""

from __future__ import annotations

import bench_secagg as bench
from fedfleet.privacy.secagg import Stage


def test_a_small_round_is_exact_and_reports_its_costs() -> None:
    row = bench.bench(20, 10_000, dropout=0.1, stage=Stage.MASKED_INPUT, seed=0)
    assert row.exact and row.included == 18  # 2 of 20 went silent before uploading their masked input
    assert row.server_seconds > 0 and row.plaintext_sum_seconds > 0 and row.client_seconds_mean > 0
    # A masked input is the quantized update at the ring's width plus the key messages: more than float32.
    assert row.upload_over_plaintext > 1 and row.download_bytes_per_client > 0


def test_mask_expansion_rate_is_positive() -> None:
    assert bench.benchmark_expand_mask(length=1 << 12, repeats=1) > 0

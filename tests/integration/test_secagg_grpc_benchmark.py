"""The gRPC secure-aggregation benchmark at its cheapest size, in every CI run: both rounds complete with
10% of the devices dropping after the key exchange, and the secure aggregate is the survivors' mean."""

from __future__ import annotations

import bench_secagg_grpc as bench


def test_the_cheapest_secure_round_over_grpc_is_the_mean_of_the_survivors() -> None:
    row = bench.measure(20, 10_000)
    assert row.participants == 18  # 2 of 20 went silent after the key exchange
    assert row.max_error <= row.error_bound
    # A masked input is the update at the ring's width (24 bits: 4 bytes a word) plus the key messages.
    assert 40_000 < row.device_sent_bytes < 60_000 and row.plain_device_sent_bytes == 40_000
    assert row.device_received_bytes > 0 and row.device_mean_s > 0
    assert row.secure_server_cpu_s > 0 and row.plain_server_cpu_s > 0 and row.cpu_ratio > 0

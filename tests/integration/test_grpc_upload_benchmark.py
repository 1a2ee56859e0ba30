"""The upload-throughput benchmark at a small size, in every CI run: every path it compares still runs
(the real upload path, the do-nothing gRPC sink on one and on four connections, TCP, TLS sealing)."""

from __future__ import annotations

import bench_grpc_upload as bench


def test_every_measurement_of_the_upload_benchmark_runs() -> None:
    result = bench.run(params=200_000, repeats=1, chunk_bytes=1 << 16)
    assert result["bytes"] == 800_000
    for key in ("ratio", "transport_only_ratio", "transport_only_4_channels_ratio", "tls_crypto_ceiling_ratio"):
        assert result[key] > 0, (key, result)
    assert result["grpc_mb_per_s"] > 0 and result["tcp_mb_per_s"] > 0 and result["tls_seal_mb_per_s"] > 0

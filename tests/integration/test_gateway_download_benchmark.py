"""The gateway download benchmark at its cheapest size, against a real `fedfleet gateway` process over TLS:
devices in separate processes download one artifact at once and every download has the published digest."""

from __future__ import annotations

import pytest

import bench_gateway_download as bench


@pytest.mark.slow
def test_the_cheapest_download_run_gets_every_device_the_published_bytes() -> None:
    result = bench.run(devices=4, clients=2, megabytes=1.0, timeout=120.0)
    assert result["devices_assigned_the_artifact"] == 4
    assert result["downloads_complete_and_digest_ok"] == 4 and result["download_errors"] == {}
    # 1 MiB in chunks of at most 256 KiB: the download is really chunked.
    assert result["chunks_per_download"] >= 4
    assert result["bytes_total_mb"] == pytest.approx(4 * result["artifact_bytes"] / 2**20, abs=0.1)
    assert result["aggregate_mb_per_second"] > 0 and result["gateway_rss_during_max_mb"] > 0
    assert result["gateway_exit"] == 0 and bench.bars(result) == []


def test_a_corrupt_or_missing_download_misses_the_bar() -> None:
    result = {"devices": 4, "devices_assigned_the_artifact": 4, "downloads_complete_and_digest_ok": 3,
              "download_errors": {"DEADLINE_EXCEEDED": 1}, "gateway_exit": 0}  # fmt: skip
    assert bench.bars(result) == ["only 3 of 4 downloads complete with the right digest; errors "
                                  "{'DEADLINE_EXCEEDED': 1}"]  # fmt: skip

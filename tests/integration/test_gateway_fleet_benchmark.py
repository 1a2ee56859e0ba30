"""The gateway fleet benchmark at its cheapest size, against a real `fedfleet gateway` process over TLS: every
device holds a stream, exactly the devices the rollout put on the candidate are told of the abort, check-ins
complete (from the Go load generator and from the Python stream holders), and the gateway stops cleanly. The
time bars are the full run's (a busy CI machine proves nothing about them); here they are only computed."""

from __future__ import annotations

import math

import pytest

import bench_gateway_fleet as bench
from fedfleet.rollout.assignment import Role, assign


@pytest.mark.slow
@pytest.mark.parametrize("client", ["go", "python"])
def test_the_cheapest_fleet_run_moves_exactly_the_canaries_back_and_counts_check_ins(client: str) -> None:
    settings = bench.Settings(
        devices=60,
        clients=2,
        per_connection=3,
        propagation_timeout=60.0,
        checkin_client=client,
        checkin_devices=5,
        checkin_seconds=1.0,
        checkin_concurrency=4,
    )
    result = bench.run(settings)
    assert result["streams_opened"] == 60 and result["stream_open_errors"] == {}
    assert result["gateway_watch_streams_gauge"] == 60
    # The benchmark's own expectation is the assignment function's answer for these devices.
    view = bench.fleet_view("sha256:" + "a" * 64, "sha256:" + "b" * 64, 50.0, generation=1)
    expected = sum(assign(view, d, bench.ATTRIBUTES).role == Role.CANARY for d in bench.device_ids(60))
    assert 0 < expected < 60 and result["canary_devices_expected"] == expected
    assert result["canary_devices_seen"] == expected
    assert result["abort_devices_moved"] == expected
    assert result["abort_devices_missed"] == 0 and result["abort_devices_told_wrongly"] == 0
    assert 0 < result["abort_propagation_p50_ms"] <= result["abort_propagation_p99_ms"]
    assert result["checkin_client"] == client and result["checkin_errors"] == {}
    assert result["checkins_completed"] > 0 and result["checkin_p50_ms"] > 0
    assert result["gateway_rss_with_streams_mb"] > 0 and result["gateway_exit"] == 0
    missed = bench.bars(result)
    assert all("opened" not in m and "abort:" not in m and "exited" not in m for m in missed), missed


def test_the_bars_name_what_a_run_missed() -> None:
    passing = {
        "devices": 10, "streams_opened": 10, "canary_devices_seen": 5, "canary_devices_expected": 5,
        "abort_devices_missed": 0, "abort_devices_told_wrongly": 0, "abort_propagation_p99_ms": 1999.0,
        "checkins_per_second": 2000.0, "gateway_exit": 0,
    }  # fmt: skip
    assert bench.bars(passing) == []
    slow = {**passing, "abort_propagation_p99_ms": 2000.0, "checkins_per_second": 1999.9}
    assert [m.split()[0] for m in bench.bars(slow)] == ["abort", "check-in"]
    assert bench.bars({**passing, "abort_propagation_p99_ms": math.nan}), "no measurement is no pass"
    lost = {**passing, "streams_opened": 9, "abort_devices_missed": 1, "gateway_exit": -9}
    assert len(bench.bars(lost)) == 3

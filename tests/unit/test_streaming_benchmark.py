"""The streaming-aggregation benchmark's memory bar, at a size cheap enough for every CI run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_streaming_aggregation.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_streaming_aggregation", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_peak_memory_does_not_grow_with_the_number_of_updates() -> None:
    bench = load_benchmark()
    small, big = bench.measure(500_000, 6), bench.measure(500_000, 60)
    passed, limit = bench.bar(big, small)
    assert passed, f"peak {big['peak_bytes']} with 60 updates exceeds {limit} (6 updates: {small['peak_bytes']})"
    assert big["update_bytes"] == 2_000_000
    # The accumulator's own footprint is a few updates' worth, not one per update.
    assert big["peak_bytes"] < 4 * big["update_bytes"]
    assert big["result_finite"] and big["gb_per_s"] > 0


def test_benchmark_prints_the_figures_and_passes(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark()
    assert bench.main(["--params", "20000", "--updates", "12", "--baseline", "2"]) == 0
    out = capsys.readouterr().out
    assert "peak,   12 updates" in out and "PASS" in out and "GB/s" in out

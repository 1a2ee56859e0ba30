"""FedAvg: the weighted mean, exact against a float64 reference, in memory that does not grow with the
cohort; and its plain server step."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from strategies_support import DIM, aggregate, updates

from fedfleet.strategies.fedavg import FedAvg, FedAvgServer


def test_fedavg_equals_sequential_float64_weighted_mean_exactly() -> None:
    deltas, weights = updates(7), [3, 1, 40, 7, 7, 2, 100]
    total = np.zeros(DIM, dtype=np.float64)
    for d, w in zip(deltas, weights, strict=True):
        total += w * d.astype(np.float64)
    expected = (total / sum(weights)).astype(np.float32)
    np.testing.assert_array_equal(aggregate(FedAvg(), deltas, weights), expected)
    np.testing.assert_allclose(
        aggregate(FedAvg(), deltas, weights), np.average(np.stack(deltas), axis=0, weights=weights), rtol=1e-6
    )


def test_fedavg_weights_by_num_examples() -> None:
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    np.testing.assert_array_equal(aggregate(FedAvg(), [ones, zeros], [3, 1]), np.full(4, 0.75, np.float32))
    np.testing.assert_array_equal(aggregate(FedAvg(), [ones, zeros], [1, 1]), np.full(4, 0.5, np.float32))


def test_fedavg_keeps_float64_precision_where_float32_sums_would_lose_it() -> None:
    # 1 + 1e-8 is 1 in float32; the float64 running sum still sees the small updates.
    big = np.full(3, 1.0, np.float32)
    small = np.full(3, 1e-4, np.float32)
    acc = FedAvg().accumulator(3)
    acc.add(big, 1)
    for _ in range(9999):
        acc.add(small, 1)
    expected = (1.0 + 9999 * float(np.float32(1e-4))) / 10000
    np.testing.assert_allclose(acc.result(), expected, rtol=1e-6)


def test_fedavg_memory_does_not_grow_with_updates() -> None:
    dim = 1_000_000
    update_bytes = dim * 4

    def peak(n: int) -> int:
        buffer = np.empty(dim, np.float32)
        rng = np.random.default_rng(1)
        tracemalloc.start()
        try:
            acc = FedAvg().accumulator(dim)
            for _ in range(n):
                rng.standard_normal(dtype=np.float32, out=buffer)
                acc.add(buffer, 5)
            acc.result()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    p5, p50 = peak(5), peak(50)
    assert p50 - p5 < 0.5 * update_bytes, (p5, p50)
    # float64 sum (2 updates) + result (1) + small scratch: nothing per update is kept.
    assert p50 < 3.5 * update_bytes


def test_fedavg_server_is_stateless_but_counts_steps() -> None:
    opt = FedAvgServer(1.0)
    x, d = np.array([0.5, -1.0, 2.0, 0.0], np.float32), np.array([0.1, -0.2, 0.0, 3.0], np.float32)
    np.testing.assert_array_equal(opt.apply(x, d), x + d)
    assert set(opt.state_dict()) == {"step"} and opt.state_dict()["step"] == 1
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \['m'\]"):
        opt.load_state_dict({"step": np.array(0), "m": np.zeros(4)})

"""The SecAgg+ neighbour graph and its parameters."""

from __future__ import annotations

import math
from collections import deque

import pytest

from fedfleet.privacy.secagg.graph import (
    choose_parameters,
    complete_graph,
    harary_graph,
    neighbour_graph,
    permutation,
)


def _connected(graph: tuple[frozenset[int], ...]) -> bool:
    seen = {0}
    queue = deque([0])
    while queue:
        for v in graph[queue.popleft()] - seen:
            seen.add(v)
            queue.append(v)
    return len(seen) == len(graph)


@pytest.mark.parametrize(("n", "k"), [(5, 2), (10, 4), (101, 8), (500, 64)])
def test_harary_graph_is_k_regular_symmetric_and_connected(n: int, k: int) -> None:
    g = harary_graph(n, k, b"s" * 32)
    assert all(len(ns) == k and u not in ns for u, ns in enumerate(g))
    assert all(u in g[v] for u, ns in enumerate(g) for v in ns)
    assert _connected(g)


def test_the_graph_depends_only_on_the_seed() -> None:
    assert harary_graph(50, 6, b"a" * 32) == harary_graph(50, 6, b"a" * 32)
    assert harary_graph(50, 6, b"a" * 32) != harary_graph(50, 6, b"b" * 32)
    order = permutation(b"a" * 32, 1000)
    assert sorted(order) == list(range(1000)) and order != list(range(1000))


def test_degree_n_minus_1_is_the_complete_graph() -> None:
    assert neighbour_graph(6, 5, b"x" * 32) == complete_graph(6)
    assert complete_graph(3) == (frozenset({1, 2}), frozenset({0, 2}), frozenset({0, 1}))


@pytest.mark.parametrize(("n", "k"), [(10, 3), (10, 0), (10, 9), (10, 10)])
def test_sparse_graphs_need_an_even_degree_below_n_minus_1(n: int, k: int) -> None:
    with pytest.raises(ValueError, match="even degree"):
        harary_graph(n, k, b"x" * 32)


def _log_tail(t: int, k: int, survive: float) -> float:
    """log P[Binomial(k, survive) < t], exactly with integers (an independent computation)."""
    total = sum(math.comb(k, i) * survive**i * (1 - survive) ** (k - i) for i in range(t))
    return math.log(total) if total > 0 else -math.inf


@pytest.mark.parametrize(("n", "dropout"), [(500, 0.1), (10_000, 0.1), (10_000, 0.2), (100_000, 0.05)])
def test_chosen_parameters_are_the_smallest_meeting_the_failure_bound(n: int, dropout: float) -> None:
    k, t = choose_parameters(n, dropout, failure_log2=40)
    assert k < n - 1 and k % 2 == 0 and t == k // 2 + 1
    budget = -40 * math.log(2) - math.log(n)
    assert _log_tail(t, k, 1 - dropout) <= budget
    assert _log_tail((k - 2) // 2 + 1, k - 2, 1 - dropout) > budget
    assert k <= 12 * math.log2(n)  # O(log n)


def test_small_cohorts_or_high_dropout_get_the_complete_graph() -> None:
    assert choose_parameters(100, 0.3) == (99, 50)
    assert choose_parameters(3, 0.0) == (2, 2)
    with pytest.raises(ValueError, match="dropout_rate"):
        choose_parameters(100, 0.5)

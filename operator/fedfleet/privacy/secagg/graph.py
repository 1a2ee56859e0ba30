"""The SecAgg+ neighbour graph (Bell et al. 2020): who masks with and holds shares for whom.

Each client masks only with its neighbours and shares its secrets only among them, so client cost grows
with the degree k = O(log n) instead of n. The graph is a Harary graph — a ring where each node links to
the k/2 nearest on each side, k-regular and k-connected — laid over a pseudorandom permutation of the
clients drawn from the round's public seed, so the server cannot choose who neighbours whom once the seed
is fixed. When k >= n−1 it is the complete graph of the original protocol.

Parameters: a neighbourhood must keep ``threshold`` live members for its owner's mask to be removable.
:func:`choose_parameters` picks the smallest even k whose chance that any of the n neighbourhoods falls
below t = ⌊k/2⌋+1 under independent dropout δ is at most 2^−σ (a union bound over binomial tails).
"""

from __future__ import annotations

import math

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Graph = tuple[frozenset[int], ...]
_ORDER_BYTES = 16


def permutation(seed: bytes, num_nodes: int) -> list[int]:
    """A pseudorandom ordering of 0..n−1 determined by ``seed``: nodes sorted by 128-bit keystream labels.

    AES-CTR keeps it identical on every platform and library version (numpy's Generator streams are not
    guaranteed stable across versions); ties, which have probability ~n²/2^129, break by node id.
    """
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"fedfleet/secagg/v1/graph").derive(seed)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(_ORDER_BYTES * num_nodes))
    labels = [stream[i * _ORDER_BYTES : (i + 1) * _ORDER_BYTES] for i in range(num_nodes)]
    return sorted(range(num_nodes), key=lambda i: (labels[i], i))


def complete_graph(num_nodes: int) -> Graph:
    everyone = frozenset(range(num_nodes))
    return tuple(everyone - {u} for u in range(num_nodes))


def harary_graph(num_nodes: int, degree: int, seed: bytes) -> Graph:
    """Even ``degree`` < n−1: node at ring position p links to positions p±1 … p±k/2 (mod n)."""
    if degree % 2 or not 2 <= degree < num_nodes - 1:
        raise ValueError(f"a sparse graph needs an even degree in 2..{num_nodes - 2}, got {degree}")
    order = permutation(seed, num_nodes)
    neighbours: list[set[int]] = [set() for _ in range(num_nodes)]
    for pos, u in enumerate(order):
        for step in range(1, degree // 2 + 1):
            v = order[(pos + step) % num_nodes]
            neighbours[u].add(v)
            neighbours[v].add(u)
    return tuple(frozenset(ns) for ns in neighbours)


def neighbour_graph(num_nodes: int, degree: int, seed: bytes) -> Graph:
    """The round's graph: complete if ``degree`` >= n−1, otherwise a permuted Harary graph."""
    if num_nodes < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients, got {num_nodes}")
    if degree >= num_nodes - 1:
        return complete_graph(num_nodes)
    return harary_graph(num_nodes, degree, seed)


def default_threshold(degree: int) -> int:
    """Smallest t with 2t > k: each honest client reveals one kind of share per neighbour, so a server
    lying about who dropped can never gather t shares of both a client's self mask and its masking key."""
    return degree // 2 + 1


def choose_parameters(num_nodes: int, dropout_rate: float, failure_log2: int = 40) -> tuple[int, int]:
    """(degree, threshold) for n clients that each drop with probability ``dropout_rate`` by the end."""
    if not 0.0 <= dropout_rate < 0.5:
        raise ValueError(f"dropout_rate must be in [0, 0.5) (t > k/2 must be reachable), got {dropout_rate}")
    if num_nodes < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients, got {num_nodes}")
    budget = -failure_log2 * math.log(2) - math.log(num_nodes)
    for degree in range(2, num_nodes - 1, 2):
        threshold = default_threshold(degree)
        if _log_binomial_cdf(threshold - 1, degree, 1.0 - dropout_rate) <= budget:
            return degree, threshold
    return num_nodes - 1, default_threshold(num_nodes - 1)


def _log_binomial_cdf(k: int, n: int, p: float) -> float:
    """log P[Binomial(n, p) <= k], summed in log space so large n cannot overflow."""
    if p >= 1.0:
        return 0.0 if k >= n else -math.inf
    if p <= 0.0:
        return 0.0
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k + 1)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))

"""What the gateway needs of the content-addressed artifact store (fedfleet.persist.artifact_store), as a small
Protocol: the Gateway core is handed a store, so the embedded runtime and tests can give it any that behaves
the same; `app.py` wires in the directory store on the gateway's volume."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from fedfleet.rollout.assignment import FleetView


class ArtifactStore(Protocol):
    def put_stream(self, chunks: Iterable[bytes], expected_digest: str, max_bytes: int) -> str:
        """Store the bytes if they hash to `expected_digest` and fit `max_bytes`; raises ValueError if not."""
        ...

    def has(self, digest: str) -> bool: ...
    def size(self, digest: str) -> int: ...
    def read_chunk(self, digest: str, offset: int, length: int) -> bytes: ...


def versions_of(view: FleetView) -> frozenset[str]:
    """Every artifact digest the view names: the fleet's stable version and each rollout's stable and candidate."""
    named = [view.stable]
    for rollout in view.rollouts:
        named += [rollout.stable, rollout.candidate]
    return frozenset(v for v in named if v)

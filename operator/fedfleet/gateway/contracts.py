"""What the gateway needs of the modules beside it: the rollout's assignment rules (fedfleet.rollout.assignment)
and the content-addressed artifact store (fedfleet.persist.artifact_store), as small Protocols.

The gateway is written against these shapes rather than the concrete classes so that its core can be driven by
anything that behaves the same (the embedded runtime, tests); `app.py` wires in the real modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol


class Assignment(Protocol):
    """Which version one device runs and why; equal assignments compare equal (a frozen dataclass)."""

    @property
    def version(self) -> str | None: ...
    @property
    def role(self) -> str: ...  # fedfleet.rollout.assignment.Role, a StrEnum: stable, canary, control, outside
    @property
    def rollout(self) -> str | None: ...
    @property
    def revision(self) -> int: ...


class RolloutView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def stable(self) -> str | None: ...
    @property
    def candidate(self) -> str | None: ...


class FleetView(Protocol):
    """Everything needed to answer any device of one fleet, as the operator publishes it."""

    @property
    def fleet(self) -> str: ...
    @property
    def stable(self) -> str | None: ...
    @property
    def rollouts(self) -> Sequence[RolloutView]: ...
    @property
    def generation(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...


class AssignmentRules(Protocol):
    """The pure assignment function and the view's codec."""

    def assign(self, view: FleetView, device_id: str, attributes: Mapping[str, str]) -> Assignment: ...
    def view_from_dict(self, data: Any) -> FleetView:
        """Raises ValueError naming the field and the rule for a view that breaks one."""
        ...


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

"""The view each fleet runs now, with the signed release of every version it names, persisted atomically under
the state dir so that a restarted gateway answers every device exactly as before.

One JSON file per fleet (`<stateDir>/fleets/<fleet>.json`), replaced whole by an atomic rename: a crash leaves
the old view or the new one. A fleet without a file has no view yet; the gateway answers its devices
UNAVAILABLE so they keep what they run.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfleet.persist.atomic import atomic_write_text
from fedfleet.rollout.assignment import FleetView

from .releases import Release, ReleaseError

FORMAT = 1


def versions_of(view: FleetView) -> frozenset[str]:
    """Every artifact digest the view names: the fleet's stable version and each rollout's stable and candidate."""
    named = [view.stable]
    for rollout in view.rollouts:
        named += [rollout.stable, rollout.candidate]
    return frozenset(v for v in named if v)


class FleetStateError(Exception):
    """A state file that cannot be read. The message names it and what to do."""


@dataclass(frozen=True)
class FleetSnapshot:
    view: FleetView
    releases: Mapping[str, Release]  # one for each version the view names
    versions: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", versions_of(self.view))
        missing = sorted(self.versions - set(self.releases))
        if missing:
            raise ValueError(f"no signed release for {', '.join(missing)}")

    @property
    def generation(self) -> int:
        return self.view.generation

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "view": self.view.to_dict(),
            "releases": [self.releases[v].to_json() for v in sorted(self.versions)],
        }


class FleetStates:
    def __init__(self, state_dir: Path, fleets: Collection[str]) -> None:
        self._dir = state_dir / "fleets"
        self._fleets = frozenset(fleets)
        self._held: dict[str, FleetSnapshot] = {}

    @property
    def fleets(self) -> frozenset[str]:
        return self._fleets

    def path_for(self, fleet: str) -> Path:
        return self._dir / f"{fleet}.json"

    def load(self) -> None:
        """Read the views persisted for the served fleets. Raises FleetStateError for a file it cannot use."""
        for fleet in sorted(self._fleets):
            path = self.path_for(fleet)
            if path.exists():
                self._held[fleet] = self._read(fleet, path)

    def get(self, fleet: str) -> FleetSnapshot | None:
        return self._held.get(fleet)

    def replace(self, fleet: str, snapshot: FleetSnapshot) -> None:
        """Persist, then hold: what devices are told is never ahead of what a restart would tell them."""
        if fleet not in self._fleets:
            raise ValueError(f"fleet {fleet!r} is not served here")
        atomic_write_text(self.path_for(fleet), json.dumps(snapshot.to_json(), sort_keys=True) + "\n")
        self._held[fleet] = snapshot

    def _read(self, fleet: str, path: Path) -> FleetSnapshot:
        advice = "restore it or delete it (the operator publishes the view again)"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a fleet state file of format {FORMAT}")
            view = FleetView.from_dict(data["view"])
            if view.fleet != fleet:
                raise ValueError(f"it holds the view of fleet {view.fleet!r}")
            releases = [Release.from_json(r) for r in data["releases"]]
            return FleetSnapshot(view, {r.digest: r for r in releases})
        except OSError as exc:
            raise FleetStateError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except (KeyError, TypeError, ValueError, ReleaseError) as exc:
            raise FleetStateError(f"{path}: unusable fleet state ({exc}); {advice}") from None

"""Each fleet's view on disk: written atomically, read back exactly, and a file that cannot be used stops the
gateway with its path instead of serving something else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedfleet.gateway.fleet_state import FleetSnapshot, FleetStateError, FleetStates
from fedfleet.rollout.assignment import FleetView
from gateway_support import FLEET, bench, view_json


def test_the_view_and_its_releases_survive_a_restart(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1, b.d2, weight=25.0, generation=7), b.v1, b.v2)
    states = FleetStates(tmp_path, [FLEET, "other"])
    states.load()
    held, written = states.get(FLEET), b.gateway.states.get(FLEET)
    assert held is not None and written is not None
    assert held.view == written.view and held.releases == written.releases and held.generation == 7
    assert held.versions == {b.d1, b.d2}
    assert states.get("other") is None
    assert [p.name for p in (tmp_path / "fleets").iterdir()] == [f"{FLEET}.json"], "no temporary file is left"


def test_a_snapshot_needs_a_release_for_every_version_it_names(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1), b.v1)
    held = b.gateway.states.get(FLEET)
    assert held is not None
    view = FleetView.from_dict(json.loads(view_json(b.d1, b.d2, weight=5.0, generation=2)))
    with pytest.raises(ValueError, match="no signed release"):
        FleetSnapshot(view, held.releases)


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # torn by hand (the gateway never writes a torn file)
        lambda text: text.replace('"format": 1', '"format": 9'),
        lambda text: text.replace('"fleet": "default"', '"fleet": "other"'),
        lambda text: text.replace('"signature": "', '"signature": "!!'),
    ],
)
def test_a_state_file_that_cannot_be_used_is_named(tmp_path: Path, damage: object) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1), b.v1)
    path = tmp_path / "fleets" / f"{FLEET}.json"
    path.write_text(damage(path.read_text()))  # type: ignore[operator]
    states = FleetStates(tmp_path, [FLEET])
    with pytest.raises(FleetStateError, match=str(path)):
        states.load()


def test_only_served_fleets_are_written(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1), b.v1)
    held = b.gateway.states.get(FLEET)
    assert held is not None
    with pytest.raises(ValueError, match="not served"):
        b.gateway.states.replace("elsewhere", held)

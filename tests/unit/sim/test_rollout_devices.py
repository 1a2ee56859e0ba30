"""The simulated rollout fleet's devices: all drawn from the seed, each aspect from its own stream; attribute
shares follow the mix, held-out examples are disjoint while the pool allows, exactly the asked share of devices
goes away or stays silent, and a bad spec is refused naming the field."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

import numpy as np
import pytest

from fedfleet.sim.rollout_devices import (
    DEVICE_CLASS,
    OS,
    AttributeMix,
    OfflineWindows,
    RolloutFleetSpec,
    build_devices,
)


def test_the_same_seed_gives_the_same_fleet_and_aspects_draw_independently() -> None:
    spec = RolloutFleetSpec(devices=300, seed=4, silent_fraction=0.1)
    a, b = build_devices(spec, 5000), build_devices(spec, 5000)
    assert [(d.attributes, d.offline, d.silent) for d in a] == [(d.attributes, d.offline, d.silent) for d in b]
    assert all(np.array_equal(x.holdout_indices, y.holdout_indices) for x, y in zip(a, b, strict=True))
    # Changing the offline windows changes nothing else.
    away = build_devices(RolloutFleetSpec(devices=300, seed=4, silent_fraction=0.1, offline=OfflineWindows(0.5)), 5000)
    assert [d.attributes for d in away] == [d.attributes for d in a]
    assert [d.silent for d in away] == [d.silent for d in a]
    assert sum(d.offline is not None for d in away) == 150
    other_seed = build_devices(RolloutFleetSpec(devices=300, seed=5), 5000)
    assert [d.attributes for d in other_seed] != [d.attributes for d in a]


def test_attribute_shares_follow_the_mix() -> None:
    mix = AttributeMix(
        MappingProxyType(
            {
                DEVICE_CLASS: MappingProxyType({"phone-low": 0.2, "tablet": 0.8}),
                OS: MappingProxyType({"ios": 1.0, "android": 0.0}),
            }
        )
    )
    devices = build_devices(RolloutFleetSpec(devices=4000, seed=1, attributes=mix), 100)
    classes = Counter(d.attributes[DEVICE_CLASS] for d in devices)
    assert abs(classes["tablet"] / 4000 - 0.8) < 0.03
    assert {d.attributes[OS] for d in devices} == {"ios"}
    assert set(devices[0].attributes) == {DEVICE_CLASS, OS}


def test_held_out_examples_are_disjoint_while_the_pool_has_enough() -> None:
    devices = build_devices(RolloutFleetSpec(devices=50, seed=2, holdout_examples=8), 400)
    taken = np.concatenate([d.holdout_indices for d in devices])
    assert taken.size == 400 and np.unique(taken).size == 400
    crowded = build_devices(RolloutFleetSpec(devices=500, seed=2, holdout_examples=8), 500)
    assert all(d.holdout_indices.size == 8 and np.unique(d.holdout_indices).size == 8 for d in crowded)
    assert max(int(d.holdout_indices.max()) for d in crowded) < 500


def test_offline_windows_lie_where_the_spec_says() -> None:
    windows = OfflineWindows(fraction=0.3, start_within=100.0, mean_seconds=50.0, min_seconds=10.0)
    devices = build_devices(RolloutFleetSpec(devices=200, seed=3, offline=windows), 1000)
    away = [d.offline for d in devices if d.offline is not None]
    assert len(away) == 60
    assert all(0.0 <= start < 100.0 and end - start >= 10.0 for start, end in away)
    d = next(d for d in devices if d.offline is not None)
    assert d.offline is not None
    assert d.offline_at(d.offline[0]) and not d.offline_at(d.offline[1]) and not d.offline_at(d.offline[0] - 0.001)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RolloutFleetSpec(devices=0), "devices must be in 1..20000"),
        (lambda: RolloutFleetSpec(devices=5, holdout_examples=0), "holdout_examples must be in 1..256"),
        (lambda: RolloutFleetSpec(devices=5, silent_fraction=1.5), "silent_fraction must be in"),
        (lambda: OfflineWindows(fraction=-0.1), "offline.fraction must be in"),
        (lambda: OfflineWindows(mean_seconds=0.0), "offline.mean_seconds must be"),
        (lambda: AttributeMix(MappingProxyType({OS: MappingProxyType({})})), "'os': needs at least one value"),
        (lambda: AttributeMix(MappingProxyType({OS: MappingProxyType({"ios": -1.0})})), "os=ios: share must be"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_an_empty_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="pool of held-out examples is empty"):
        build_devices(RolloutFleetSpec(devices=3), 0)

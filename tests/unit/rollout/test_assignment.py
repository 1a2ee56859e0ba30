"""Assignment: a pure function of the published fleet view and the device; its JSON shape and bad input."""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfleet.rollout.assignment import (
    MAX_ROLLOUTS,
    Assignment,
    FleetView,
    Role,
    RolloutView,
    assign,
)
from fedfleet.rollout.errors import InvalidField
from fedfleet.rollout.selector import DeviceSelector, Operator, Requirement

OLD = "sha256:" + "0" * 64
STABLE = "sha256:" + "1" * 64
CANDIDATE = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
DEVICES = [f"dev-{i:05d}" for i in range(10_000)]
EU = {"region": "eu-west"}
US = {"region": "us-east"}


def rollout(name: str = "mnist", weight: float = 10, **changes: Any) -> RolloutView:
    values: dict[str, Any] = {
        "name": name,
        "salt": f"salt-{name}",
        "revision": 3,
        "stable": STABLE,
        "candidate": CANDIDATE,
        "weight": weight,
        "selector": DeviceSelector(),
        "control": False,
    }
    values.update(changes)
    return RolloutView(**values)


def fleet(*rollouts: RolloutView, stable: str | None = OLD) -> FleetView:
    return FleetView(fleet="phones", stable=stable, rollouts=rollouts, generation=7)


def roles(view: FleetView, attributes: dict[str, str] | None = None) -> Counter[Role]:
    return Counter(assign(view, d, attributes or EU).role for d in DEVICES)


def test_the_canary_share_follows_the_weight() -> None:
    for weight in (1, 5, 25, 100):
        share = roles(fleet(rollout(weight=weight)))[Role.CANARY] / len(DEVICES)
        assert abs(share - weight / 100) < 0.02, (weight, share)


def test_canary_devices_get_the_candidate_and_the_rest_the_rollouts_stable_version() -> None:
    view = fleet(rollout(weight=50))
    for device in DEVICES[:500]:
        got = assign(view, device, EU)
        assert got.rollout == "mnist" and got.revision == 3
        assert got.version == (CANDIDATE if got.role is Role.CANARY else STABLE)
        assert got.role in (Role.CANARY, Role.STABLE)


def test_raising_the_weight_never_moves_a_canary_device_back() -> None:
    previous: set[str] = set()
    for weight in (1, 5, 25, 50, 100):
        view = fleet(rollout(weight=weight))
        canary = {d for d in DEVICES if assign(view, d, EU).role is Role.CANARY}
        assert previous <= canary
        previous = canary


def test_an_aborted_rollout_puts_everybody_on_stable() -> None:
    view = fleet(rollout(weight=0, control=True))
    assert roles(view) == Counter({Role.STABLE: len(DEVICES)})
    assert {assign(view, d, EU).version for d in DEVICES[:200]} == {STABLE}


def test_the_control_cohort_is_as_large_as_the_canary_and_stays_on_stable() -> None:
    view = fleet(rollout(weight=10, control=True))
    counted = roles(view)
    assert abs(counted[Role.CONTROL] - counted[Role.CANARY]) < 0.03 * len(DEVICES)
    assert abs(counted[Role.CONTROL] / len(DEVICES) - 0.10) < 0.02
    controls = [assign(view, d, EU) for d in DEVICES[:2000]]
    assert {a.version for a in controls if a.role is Role.CONTROL} == {STABLE}
    # Above weight 50 there is no room for it.
    assert roles(fleet(rollout(weight=60, control=True)))[Role.CONTROL] == 0


def test_devices_outside_every_selector_run_the_fleets_stable_version() -> None:
    eu_only = rollout(selector=DeviceSelector({"region": "eu-west"}), weight=100)
    view = fleet(eu_only)
    assert assign(view, "dev-1", US) == Assignment(OLD, Role.OUTSIDE, None, 0)
    assert assign(view, "dev-1", EU) == Assignment(CANDIDATE, Role.CANARY, "mnist", 3)
    assert assign(fleet(eu_only, stable=None), "dev-1", US) == Assignment(None, Role.OUTSIDE, None, 0)


def test_a_rollout_without_its_own_stable_version_falls_back_to_the_fleets() -> None:
    view = fleet(rollout(weight=0, stable=None))
    assert assign(view, "dev-1", EU) == Assignment(OLD, Role.STABLE, "mnist", 3)


def test_the_first_rollout_by_name_decides_whatever_order_it_was_published_in() -> None:
    alpha = rollout("alpha", weight=100, candidate=OTHER, selector=DeviceSelector({"region": "eu-west"}))
    beta = rollout("beta", weight=100)
    for view in (fleet(alpha, beta), fleet(beta, alpha)):
        assert [r.name for r in view.rollouts] == ["alpha", "beta"]
        assert assign(view, "dev-1", EU) == Assignment(OTHER, Role.CANARY, "alpha", 3)
        assert assign(view, "dev-1", US) == Assignment(CANDIDATE, Role.CANARY, "beta", 3)
    assert fleet(alpha, beta) == fleet(beta, alpha)


def test_every_replica_answers_the_same_from_the_published_json() -> None:
    segment = DeviceSelector(match_expressions=(Requirement("region", Operator.IN, ("eu-west", "eu-north")),))
    view = fleet(rollout("a", weight=12.5, control=True, selector=segment), rollout("b", weight=40))
    replica = FleetView.from_dict(json.loads(json.dumps(view.to_dict())))
    assert replica == view
    for device in DEVICES[:2000]:
        for attributes in (EU, US, {}):
            assert assign(replica, device, attributes) == assign(view, device, attributes)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
            st.floats(min_value=0, max_value=100, allow_nan=False),
            st.booleans(),
            st.sampled_from([None, STABLE]),
            st.sampled_from([{}, {"matchLabels": {"region": "eu-west"}}]),
        ),
        max_size=5,
        unique_by=lambda t: t[0],
    ),
    st.sampled_from([None, OLD]),
    st.integers(min_value=0, max_value=2**63 - 1),
)
def test_the_json_shape_round_trips(
    items: list[tuple[str, float, bool, str | None, dict[str, Any]]], stable: str | None, generation: int
) -> None:
    rollouts = tuple(
        rollout(name, weight=weight, control=control, stable=own, selector=DeviceSelector.from_dict(selector))
        for name, weight, control, own, selector in items
    )
    view = FleetView(fleet="phones", stable=stable, rollouts=rollouts, generation=generation)
    text = json.dumps(view.to_dict(), allow_nan=False)  # JSON-safe: no NaN, no Python objects
    assert FleetView.from_dict(json.loads(text)) == view


DELETE = object()  # `changed` removes the key instead of setting it


def valid() -> dict[str, Any]:
    return fleet(rollout("a"), rollout("b", selector=DeviceSelector({"region": "eu-west"}))).to_dict()


def changed(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(valid())
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("format",), 2, "fleetView.format"),
        (("format",), True, "fleetView.format"),
        (("fleet",), "Phones_EU", "fleetView.fleet"),
        (("fleet",), "", "fleetView.fleet"),
        (("stable",), "sha256:xyz", "fleetView.stable"),
        (("stable",), "md5:" + "0" * 32, "fleetView.stable"),
        (("generation",), -1, "fleetView.generation"),
        (("generation",), 1.5, "fleetView.generation"),
        (("rollouts",), {"a": 1}, "fleetView.rollouts"),
        (("extra",), 1, "fleetView.extra"),
        (("generation",), DELETE, "fleetView.generation"),
        (("rollouts", 1, "weight"), 100.5, "fleetView.rollouts[1].weight"),
        (("rollouts", 1, "weight"), float("nan"), "fleetView.rollouts[1].weight"),
        (("rollouts", 1, "weight"), "50", "fleetView.rollouts[1].weight"),
        (("rollouts", 0, "salt"), "", "fleetView.rollouts[0].salt"),
        (("rollouts", 0, "candidate"), "sha256:" + "A" * 64, "fleetView.rollouts[0].candidate"),
        (("rollouts", 0, "candidate"), None, "fleetView.rollouts[0].weight"),  # weight 10 with no candidate
        (("rollouts", 0, "revision"), "3", "fleetView.rollouts[0].revision"),
        (("rollouts", 0, "control"), "yes", "fleetView.rollouts[0].control"),
        (("rollouts", 0, "stable"), DELETE, "fleetView.rollouts[0].stable"),
        (("rollouts", 0, "selector"), {"matchLabels": {"region": 1}}, "fleetView.rollouts[0].selector.matchLabels"),
        (("rollouts", 1, "name"), "a", "fleetView.rollouts"),  # the same name twice
        (("rollouts", 0), "a", "fleetView.rollouts[0]"),
    ],
)
def test_bad_views_are_refused_naming_the_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    with pytest.raises(InvalidField) as error:
        FleetView.from_dict(changed(path, value))
    assert error.value.field.startswith(field), error.value


def test_the_number_of_rollouts_is_bounded() -> None:
    data = valid()
    data["rollouts"] = [rollout(f"r{i}").to_dict() for i in range(MAX_ROLLOUTS + 1)]
    with pytest.raises(InvalidField, match="at most"):
        FleetView.from_dict(data)
    with pytest.raises(InvalidField, match="object"):
        FleetView.from_dict([])


def test_views_built_in_code_are_checked_too() -> None:
    with pytest.raises(InvalidField) as error:
        rollout(weight=101)
    assert error.value.field == "weight"
    with pytest.raises(InvalidField, match="no candidate"):
        rollout(weight=1, candidate=None)
    with pytest.raises(InvalidField, match="twice"):
        fleet(rollout("a"), rollout("a"))
    with pytest.raises(InvalidField, match="deviceId"):
        assign(fleet(rollout()), "", EU)

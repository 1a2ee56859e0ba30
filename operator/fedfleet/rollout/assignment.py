"""Which model version a device runs: a pure function of what the operator published and of the device.

The operator publishes a `FleetView` per fleet (from its rollouts' status); a gateway answers every device
of the fleet from it alone. No state of the gateway enters the answer, so every replica answers the same,
a restarted gateway needs nothing but the last view, and a device that asks twice gets the same answer.

Rollouts are tried in name order and the first whose selector matches the device decides; a device that no
selector matches runs the fleet's stable version (role OUTSIDE). Inside a rollout the device's bucket
(`cohort.bucket` with the rollout's salt) puts it in the canary (the candidate), in the control cohort (the
stable version, counted apart so the gate has a concurrent baseline) or with the rest (the stable
version). An aborted rollout is published with weight 0: no bucket is below 0, so nobody is canary.

`FleetView.to_dict` / `from_dict` are the JSON the gateway receives from the operator and keeps on disk;
`from_dict` refuses anything that does not make sense, naming the field.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fedfleet.rollout.cohort import MAX_SALT_CHARS, bucket, in_canary, in_control
from fedfleet.rollout.errors import InvalidField, shown
from fedfleet.rollout.selector import DeviceSelector

#: The version of the JSON shape of a FleetView; a gateway refuses a shape it does not know.
FORMAT = 1
#: Rollouts one fleet may have at once: each check-in is matched against all of them.
MAX_ROLLOUTS = 64
#: Revisions and generations are Kubernetes-style counters; the bound keeps them int64 on every wire.
MAX_COUNTER = 2**63 - 1

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# A Kubernetes object name (DNS-1123 subdomain), as ModelRollout names and fleet names are.
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_NAME = 253


class Role(StrEnum):
    STABLE = "stable"  # inside a rollout's segment, on its stable version
    CANARY = "canary"  # inside, on the candidate
    CONTROL = "control"  # inside, on the stable version, held as the canary's baseline
    OUTSIDE = "outside"  # no rollout's selector matches: the fleet's stable version


@dataclass(frozen=True)
class RolloutView:
    """What the operator publishes about one rollout (from its status)."""

    name: str
    salt: str
    revision: int
    stable: str | None  # digest "sha256:<64 hex>" the segment runs outside the canary; None: the fleet's
    candidate: str | None  # the canary's digest, None when there is none
    weight: float  # 0..100; 0 when aborted
    selector: DeviceSelector  # empty: the whole fleet
    control: bool  # hold an equal control cohort on the stable version

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if not isinstance(self.salt, str) or not self.salt or len(self.salt) > MAX_SALT_CHARS:
            raise InvalidField("salt", f"must be a non-empty string of at most {MAX_SALT_CHARS} characters")
        _check_counter(self.revision, "revision")
        _check_digest(self.stable, "stable")
        _check_digest(self.candidate, "candidate")
        object.__setattr__(self, "weight", _checked_weight(self.weight))
        if self.candidate is None and self.weight > 0:
            raise InvalidField("weight", "must be 0 when there is no candidate")
        if not isinstance(self.selector, DeviceSelector):
            raise InvalidField("selector", "must be a DeviceSelector")
        if not isinstance(self.control, bool):
            raise InvalidField("control", "must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "salt": self.salt,
            "revision": self.revision,
            "stable": self.stable,
            "candidate": self.candidate,
            "weight": self.weight,
            "selector": self.selector.to_dict(),
            "control": self.control,
        }

    @classmethod
    def from_dict(cls, data: object, field: str = "rollout") -> RolloutView:
        values = _fields(data, field, required=_ROLLOUT_KEYS)
        selector = DeviceSelector.from_dict(values["selector"], f"{field}.selector")
        with _under(field):
            return cls(
                name=values["name"],
                salt=values["salt"],
                revision=values["revision"],
                stable=values["stable"],
                candidate=values["candidate"],
                weight=values["weight"],
                selector=selector,
                control=values["control"],
            )


@dataclass(frozen=True)
class FleetView:
    """Everything a gateway needs to answer any device of one fleet. `rollouts` is kept sorted by name."""

    fleet: str
    stable: str | None  # the fleet's stable digest; None before any rollout has finished
    rollouts: tuple[RolloutView, ...]
    generation: int  # grows with every change the operator publishes, so a gateway can drop stale views

    def __post_init__(self) -> None:
        _check_name(self.fleet, "fleet")
        _check_digest(self.stable, "stable")
        _check_counter(self.generation, "generation")
        if not isinstance(self.rollouts, tuple) or not all(isinstance(r, RolloutView) for r in self.rollouts):
            raise InvalidField("rollouts", "must be a tuple of RolloutView")
        if len(self.rollouts) > MAX_ROLLOUTS:
            raise InvalidField("rollouts", f"must have at most {MAX_ROLLOUTS} entries")
        names = [r.name for r in self.rollouts]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise InvalidField("rollouts", f"names a rollout twice: {duplicate!r}")
        # The order decides which rollout wins when selectors overlap, so it must not depend on who built
        # the tuple: the name order is what the operator, every gateway and the docs agree on.
        object.__setattr__(self, "rollouts", tuple(sorted(self.rollouts, key=lambda r: r.name)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fleet": self.fleet,
            "stable": self.stable,
            "generation": self.generation,
            "rollouts": [r.to_dict() for r in self.rollouts],
        }

    @classmethod
    def from_dict(cls, data: object, field: str = "fleetView") -> FleetView:
        values = _fields(data, field, required=_FLEET_KEYS)
        if isinstance(values["format"], bool) or values["format"] != FORMAT:
            raise InvalidField(f"{field}.format", f"must be {FORMAT}, not {shown(values['format'])}")
        items = values["rollouts"]
        if not isinstance(items, list):
            raise InvalidField(f"{field}.rollouts", "must be a list")
        if len(items) > MAX_ROLLOUTS:
            raise InvalidField(f"{field}.rollouts", f"must have at most {MAX_ROLLOUTS} entries")
        rollouts = tuple(RolloutView.from_dict(item, f"{field}.rollouts[{i}]") for i, item in enumerate(items))
        with _under(field):
            return cls(
                fleet=values["fleet"], stable=values["stable"], rollouts=rollouts, generation=values["generation"]
            )


@dataclass(frozen=True)
class Assignment:
    version: str | None  # the digest the device should run; None when the fleet has no model yet
    role: Role
    rollout: str | None  # the rollout that decided; None for OUTSIDE
    revision: int  # that rollout's revision; 0 for OUTSIDE


def assign(view: FleetView, device_id: str, attributes: Mapping[str, str]) -> Assignment:
    """The version `device_id`, reporting `attributes`, runs under `view`."""
    for rollout in view.rollouts:
        if not rollout.selector.matches(attributes):
            continue
        slot = bucket(rollout.salt, device_id)
        stable = rollout.stable if rollout.stable is not None else view.stable
        if in_canary(slot, rollout.weight):
            return Assignment(rollout.candidate, Role.CANARY, rollout.name, rollout.revision)
        if rollout.control and in_control(slot, rollout.weight):
            return Assignment(stable, Role.CONTROL, rollout.name, rollout.revision)
        return Assignment(stable, Role.STABLE, rollout.name, rollout.revision)
    return Assignment(view.stable, Role.OUTSIDE, None, 0)


_ROLLOUT_KEYS = ("name", "salt", "revision", "stable", "candidate", "weight", "selector", "control")
_FLEET_KEYS = ("format", "fleet", "stable", "generation", "rollouts")


def _fields(data: object, field: str, required: tuple[str, ...]) -> dict[str, Any]:
    """The keys of a JSON object, each present (null where a value may be absent) and none unknown."""
    if not isinstance(data, Mapping):
        raise InvalidField(field, "must be an object")
    unknown = sorted(str(k) for k in data if k not in required)
    if unknown:
        raise InvalidField(f"{field}.{unknown[0]}", f"unknown field; expected {', '.join(required)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise InvalidField(f"{field}.{missing[0]}", "is required (null where there is no value)")
    return {k: data[k] for k in required}


@contextlib.contextmanager
def _under(field: str) -> Iterator[None]:
    """Re-raise an InvalidField from a constructor with its path below `field`."""
    try:
        yield
    except InvalidField as error:
        raise InvalidField(f"{field}.{error.field}", error.rule) from None


def _check_name(value: object, field: str) -> None:
    if not isinstance(value, str) or len(value) > _MAX_NAME or _NAME_RE.fullmatch(value) is None:
        raise InvalidField(
            field, "must be a Kubernetes object name: lowercase alphanumerics, '-' and '.', at most 253 characters"
        )


def _check_digest(value: object, field: str) -> None:
    if value is not None and (not isinstance(value, str) or _DIGEST_RE.fullmatch(value) is None):
        raise InvalidField(field, "must be null or an artifact digest 'sha256:' followed by 64 lowercase hex digits")


def _check_counter(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNTER:
        raise InvalidField(field, "must be a non-negative integer")


def _checked_weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField("weight", "must be a number")
    if not 0 <= value <= 100:  # also refuses NaN and infinities
        raise InvalidField("weight", f"must be between 0 and 100, not {shown(value)}")
    return float(value)

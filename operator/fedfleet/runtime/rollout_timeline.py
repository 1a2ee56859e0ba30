"""What an embedded rollout records as it goes: the fleet counted from its devices, the on-device accuracy the
gateway heard per version, each transition of the step machine and each measurement of its analyses. The
live display prints from it, and `report.json` and `report.png` are written from it.

Devices are counted by asking each simulated device what it runs (`ModelUpdater.running_version`), never
from the controller's idea of what they should run: the two agreeing is what a rollout has to show.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fedfleet.gateway.health_stats import VersionHealth
from fedfleet.rollout.selector import DeviceSelector
from fedfleet.sim.rollout_fleet import RolloutFleet

CANDIDATE, STABLE = "candidate", "stable"


@dataclass(frozen=True)
class DeviceCount:
    """Devices per version at one moment, asked of the devices themselves."""

    candidate: int  # online devices running the candidate
    stable: int  # online devices running the version the fleet ran before
    other: int  # online devices on neither (no model yet)
    offline: int
    offline_candidate: int  # of the offline devices, those that ran the candidate when they left
    selected_online: int  # online devices the rollout's selector matches: the weight is a share of these
    selected_candidate: int  # of them, those running the candidate

    @property
    def share(self) -> float | None:
        """The share (0..1) of the selected online devices running the candidate; None when none is online."""
        return self.selected_candidate / self.selected_online if self.selected_online else None

    def describe(self) -> str:
        text = f"{self.candidate} candidate · {self.stable} stable"
        if self.other:
            text += f" · {self.other} without a model"
        return text + f" · {self.offline} offline"


def count_devices(fleet: RolloutFleet, candidate: str, stable: str, selector: DeviceSelector) -> DeviceCount:
    online = fleet.online()
    counts = {CANDIDATE: 0, STABLE: 0, "other": 0}
    offline = offline_candidate = selected_online = selected_candidate = 0
    for device in fleet.devices:
        running = fleet.updater(device.device_id).running_version
        if device.device_id not in online:
            offline += 1
            offline_candidate += running == candidate
            continue
        label = CANDIDATE if running == candidate else STABLE if running == stable else "other"
        counts[label] += 1
        if selector.matches(device.attributes):
            selected_online += 1
            selected_candidate += running == candidate
    return DeviceCount(
        candidate=counts[CANDIDATE],
        stable=counts[STABLE],
        other=counts["other"],
        offline=offline,
        offline_candidate=offline_candidate,
        selected_online=selected_online,
        selected_candidate=selected_candidate,
    )


def accuracy_by_version(health: Iterable[VersionHealth], labels: Mapping[str, str]) -> dict[str, float]:
    """The mean accuracy devices reported on each labelled version (every role) since the view's current
    generation; a version nobody reported on is left out."""
    sums: dict[str, tuple[float, int]] = {}
    for row in health:
        label = labels.get(row.version)
        if label is None or not row.reports or math.isnan(row.mean_accuracy):
            continue
        total, reports = sums.get(label, (0.0, 0))
        sums[label] = (total + row.mean_accuracy * row.reports, reports + row.reports)
    return {label: total / reports for label, (total, reports) in sorted(sums.items())}


@dataclass(frozen=True)
class Point:
    """The rollout and its fleet after one reconciliation, once the devices had done what it asked."""

    t: float  # simulated seconds since the rollout started
    phase: str
    step: int  # the current step's index; len(steps) once done
    weight: int
    devices: DeviceCount
    accuracy: dict[str, float]  # CANDIDATE / STABLE -> mean on-device accuracy in the current generation


@dataclass(frozen=True)
class Transition:
    t: float
    type: str  # Normal or Warning, as a Kubernetes Event
    reason: str
    message: str
    weight: int
    devices: DeviceCount


@dataclass(frozen=True)
class MeasurementLine:
    t: float
    metric: str
    background: bool
    phase: str  # the measurement's: Successful, Failed, Inconclusive or Error
    run_phase: str  # its run's, after it
    value: float | None
    baseline: float | None
    reporting_devices: int
    message: str
    devices: DeviceCount


@dataclass
class Timeline:
    points: list[Point] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    measurements: list[MeasurementLine] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "points": [_with_share(asdict(p)) for p in self.points],
            "transitions": [asdict(t) for t in self.transitions],
            "measurements": [asdict(m) for m in self.measurements],
        }


def _with_share(point: dict[str, Any]) -> dict[str, Any]:
    devices = point["devices"]
    selected = devices["selected_online"]
    devices["share"] = devices["selected_candidate"] / selected if selected else None
    return point

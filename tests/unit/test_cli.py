"""`fedfleet device-sim`'s exit status says how the fleet's run ended."""

from __future__ import annotations

import pytest

from fedfleet.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_STOPPED, fleet_exit_code
from fedfleet.sim.network_fleet import DeviceEnd, FleetReport


@pytest.mark.parametrize(
    ("ends", "code"),
    [
        ({DeviceEnd.DONE: 4}, EXIT_OK),
        ({DeviceEnd.DONE: 3, DeviceEnd.REFUSED: 1, DeviceEnd.GAVE_UP: 1}, EXIT_BAD_INPUT),  # fix the input first
        ({DeviceEnd.DONE: 3, DeviceEnd.GAVE_UP: 1}, EXIT_FAILED),
        ({DeviceEnd.DONE: 3, DeviceEnd.FAILED: 1}, EXIT_FAILED),
        ({DeviceEnd.DONE: 1, DeviceEnd.STOPPED: 3}, EXIT_STOPPED),
    ],
    ids=["all done", "refused", "gave up", "failed", "stopped"],
)
def test_device_sim_exit_status(ends: dict[DeviceEnd, int], code: int) -> None:
    report = FleetReport(devices=sum(ends.values()))
    report.ends.update(ends)
    assert fleet_exit_code(report) == code

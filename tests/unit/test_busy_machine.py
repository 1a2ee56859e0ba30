"""The tests' measure of a busy machine (tests/busy_machine.py): budgets stretch with the slowdown, never shrink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from busy_machine import IDLE_MACHINE, MachineSpeed, measure_speed
from fedfleet.runtime.local import default_ledger_path


def test_budgets_and_time_scales_stretch_by_the_slowdown() -> None:
    busy = MachineSpeed(2.5)
    assert busy.seconds(20.0) == 50.0
    assert busy.time_scale(0.02) == pytest.approx(0.05)
    assert IDLE_MACHINE.seconds(20.0) == 20.0
    with pytest.raises(ValueError, match="at least 1"):
        MachineSpeed(0.5)  # a fast machine keeps the budgets as written


def test_a_measurement_times_every_run_and_is_at_least_one() -> None:
    speed = measure_speed(runs=3)
    assert len(speed.samples) == 3 and all(s > 0 for s in speed.samples)
    assert speed.slowdown >= 1.0
    assert str(speed).startswith("slowdown ")


def test_every_test_gets_private_user_data(private_user_data: Path) -> None:
    assert os.environ["XDG_DATA_HOME"] == str(private_user_data)
    assert Path(os.environ["FEDFLEET_LEDGER"]).is_relative_to(private_user_data)
    assert not private_user_data.is_relative_to(Path.home())
    # The machine's privacy ledger, which `fedfleet run` uses by default, is this test's own.
    assert default_ledger_path().is_relative_to(private_user_data)


def test_torch_runs_on_the_threads_fedfleet_gives_it(torch_threads: int) -> None:
    assert torch.get_num_threads() == torch_threads == int(os.environ.get("FEDFLEET_TORCH_THREADS", "1"))

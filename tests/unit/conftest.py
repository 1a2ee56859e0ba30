"""Fixtures every test here gets (see tests/busy_machine.py): torch threads as in fedfleet processes, private user
data, and the machine's speed."""

from __future__ import annotations

from busy_machine import machine_speed, private_user_data, torch_threads

__all__ = ["machine_speed", "private_user_data", "torch_threads"]

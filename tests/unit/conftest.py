"""Fixtures every test here gets (see tests/busy_machine.py): private user data, and the machine's speed."""

from __future__ import annotations

from busy_machine import machine_speed, private_user_data

__all__ = ["machine_speed", "private_user_data"]

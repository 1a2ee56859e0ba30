"""The devices the aggregator has heard from: consent, capabilities, availability, and whether they are busy.

In memory only: after a restart devices check in again (the SDK does it by itself when told it is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DeviceState:
    device_id: str
    consent: bool
    train_examples: int
    holdout_examples: int
    available: bool = False
    for_round: int = 0  # the round the availability was judged for; 0: the device does not track rounds
    last_seen: float = 0.0
    polling: int = 0  # long-polls in progress
    busy_round: int = 0  # the round whose task the device was handed and has not come back from


class DeviceRegistry:
    """Devices by id, with the rules for who may be invited to a round."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._devices: dict[str, DeviceState] = {}
        self.last_new_device_at = float("-inf")

    def check_in(
        self, device_id: str, *, consent: bool, train_examples: int, holdout_examples: int, now: float
    ) -> DeviceState:
        state = self._devices.get(device_id)
        if state is None:
            state = DeviceState(device_id, consent, train_examples, holdout_examples)
            self._devices[device_id] = state
            self.last_new_device_at = now
        state.consent = consent
        state.train_examples = train_examples
        state.holdout_examples = holdout_examples
        state.last_seen = now
        return state

    def get(self, device_id: str) -> DeviceState | None:
        return self._devices.get(device_id)

    def heard_from(self, state: DeviceState, available: bool, for_round: int, now: float) -> None:
        """The device polled: it is back from any task and tells whether it can work for `for_round`."""
        state.available = available
        state.for_round = for_round
        state.last_seen = now
        state.busy_round = 0

    def connected(self, now: float) -> list[DeviceState]:
        return [d for d in self._devices.values() if d.polling > 0 or now - d.last_seen <= self.ttl_seconds]

    def candidates(self, next_round: int, now: float) -> list[str]:
        """Devices that may be invited to `next_round`: consenting, connected, idle, available for that round."""
        return [
            d.device_id
            for d in self.connected(now)
            if d.consent and d.busy_round == 0 and d.available and d.for_round in (0, next_round)
        ]

    def settled(self, next_round: int, now: float) -> bool:
        """Every connected idle device has said whether it can work in `next_round`."""
        return all(d.for_round in (0, next_round) for d in self.connected(now) if d.consent and d.busy_round == 0)

    def all(self) -> list[DeviceState]:
        return list(self._devices.values())

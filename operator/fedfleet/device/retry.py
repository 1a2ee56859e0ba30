"""Exponential backoff with full jitter, for devices reconnecting to an aggregator.

Full jitter (a uniform draw below the exponential cap, AWS Architecture Blog 2015) spreads a fleet's retries
after an aggregator restart, instead of having every device hit it again at the same instants.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.2  # seconds: the cap of the first delay
    multiplier: float = 2.0
    maximum: float = 10.0  # the cap never grows past this
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.multiplier >= 1 and self.maximum >= self.initial):
            raise ValueError("backoff needs initial > 0, multiplier >= 1 and maximum >= initial")

    def delays(self) -> Iterator[float]:
        """An endless series of delays: uniform in [0, min(maximum, initial·multiplier^k)]."""
        cap = self.initial
        while True:
            yield self.rng.uniform(0.0, cap)
            cap = min(self.maximum, cap * self.multiplier)

"""Independent random streams derived from the job seed.

Every random choice of a round draws from a generator keyed by (seed, round, purpose, ...) instead of one
long-lived generator. A run resumed from a checkpoint therefore makes exactly the same choices as an
uninterrupted one, without saving any generator state, and adding a new purpose never shifts the others.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Purpose(IntEnum):
    COHORT = 1
    SIMULATION = 2
    TRAINING = 3
    EVALUATION = 4
    ATTACK = 5
    MODEL_INIT = 6
    DP_NOISE = 7


def stream(seed: int, purpose: Purpose, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(purpose), *keys])


def derive_seed(seed: int, purpose: Purpose, *keys: int) -> int:
    """A 31-bit integer seed (for torch generators) from the same key scheme."""
    return int(stream(seed, purpose, *keys).integers(0, 2**31 - 1))

"""Choosing who takes part in a round."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def invitations(clients_per_round: int, over_selection: float, available: int) -> int:
    """How many devices to invite: the target times the over-selection factor, capped by who is there.

    Over-selection (Bonawitz et al. 2019, "Towards Federated Learning at Scale") invites more devices than
    the round needs so that dropouts and stragglers do not stall it; the first reports to arrive are used.
    """
    return min(available, math.ceil(clients_per_round * over_selection))


def select_cohort(
    available: Sequence[str], clients_per_round: int, over_selection: float, rng: np.random.Generator
) -> list[str]:
    """A uniform sample without replacement of the available devices, in a stable order.

    The candidates are sorted first so the choice depends only on the set of available devices and the
    generator, never on the order they checked in — that is what makes a resumed run identical.
    """
    candidates = sorted(available)
    k = invitations(clients_per_round, over_selection, len(candidates))
    if k == 0:
        return []
    chosen = rng.choice(len(candidates), size=k, replace=False)
    return [candidates[i] for i in sorted(chosen.tolist())]

"""What a Byzantine device sends instead of its honest update.

The attacks are the standard ones robust-aggregation papers evaluate against: sign flipping (Damaskinos et
al. 2019; Allen-Zhu et al. 2020), Gaussian noise (Blanchard et al. 2017) and boosted model replacement
(Bagdasaryan et al. 2020; Bhagoji et al. 2019).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedfleet.api.federatedjob import ByzantineSpec


def attack_update(delta: NDArray[np.floating], spec: ByzantineSpec, rng: np.random.Generator) -> NDArray[np.float32]:
    """The malicious replacement of the honest ``delta`` (a new float32 array of the same shape).

    * ``signFlip``: ``scale × delta`` (scale defaults to −5: pull hard the other way);
    * ``gaussianNoise``: a draw of N(0, noise_std²) per coordinate, ignoring the honest update;
    * ``modelReplacement``: ``|scale| × delta``, the honest direction boosted to dominate the average.
    """
    honest = np.asarray(delta, dtype=np.float32)
    if spec.attack == "signFlip":
        return (honest * np.float32(spec.scale)).astype(np.float32, copy=False)
    if spec.attack == "gaussianNoise":
        return rng.normal(0.0, spec.noise_std, size=honest.shape).astype(np.float32)
    if spec.attack == "modelReplacement":
        return (honest * np.float32(abs(spec.scale))).astype(np.float32, copy=False)
    raise ValueError(f"unknown attack {spec.attack!r}")

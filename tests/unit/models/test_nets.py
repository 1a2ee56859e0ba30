"""Counting a model's parameters without building it agrees with building it."""

from __future__ import annotations

import pytest

from fedfleet.models.nets import ARCHITECTURES, Architecture, build_model, count_parameters
from fedfleet.models.params import num_parameters


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(("image_shape", "num_classes"), [((1, 8, 8), 10), ((3, 7, 5), 2), ((2, 4, 9), 3)])
def test_count_parameters_equals_the_built_models_count(
    architecture: Architecture, image_shape: tuple[int, int, int], num_classes: int
) -> None:
    expected = num_parameters(build_model(architecture, image_shape, num_classes))
    assert count_parameters(architecture, image_shape, num_classes) == expected


def test_the_documented_sizes_on_mnist() -> None:
    assert count_parameters("2nn", (1, 28, 28), 10) == 199_210
    assert count_parameters("cnn", (1, 28, 28), 10) == 1_663_370


def test_an_absurd_shape_is_counted_not_allocated() -> None:
    assert count_parameters("logistic", (3, 100_000, 100_000), 10) == 3 * 10**10 * 10 + 10


@pytest.mark.parametrize(
    ("architecture", "image_shape", "num_classes", "rule"),
    [
        ("resnet", (1, 8, 8), 10, "unknown architecture"),
        ("2nn", (0, 8, 8), 10, "image_shape must be positive"),
        ("2nn", (1, 8, 8), 1, "num_classes must be at least 2"),
        ("cnn", (1, 3, 8), 10, "at least 4x4"),
    ],
)
def test_count_and_build_refuse_the_same_inputs(
    architecture: str, image_shape: tuple[int, int, int], num_classes: int, rule: str
) -> None:
    with pytest.raises(ValueError, match=rule):
        count_parameters(architecture, image_shape, num_classes)
    with pytest.raises(ValueError, match=rule):
        build_model(architecture, image_shape, num_classes)  # type: ignore[arg-type]

"""The image classifiers devices train: McMahan et al. 2017's 2NN and CNN, and softmax regression.

Initialisation is deterministic from a seed and uses a private ``torch.Generator``, so building a model
never disturbs the global torch RNG (other code — and other simulated devices — may depend on it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

Architecture = Literal["2nn", "cnn", "logistic"]
ARCHITECTURES: tuple[Architecture, ...] = ("2nn", "cnn", "logistic")

HIDDEN_2NN = 200
CNN_CHANNELS = (32, 64)
CNN_KERNEL = 5
CNN_HIDDEN = 512


def build_model(
    architecture: Architecture,
    image_shape: tuple[int, int, int],
    num_classes: int,
    seed: int = 0,
) -> nn.Module:
    """A freshly initialised model for images of ``image_shape`` (C, H, W) and ``num_classes`` classes.

    * ``2nn``: MLP with two hidden layers of 200 ReLU units (199,210 parameters on 28x28, 10 classes);
    * ``cnn``: two 5x5 convolutions (32 and 64 channels, "same" padding), each followed by ReLU and 2x2
      max pooling, a 512-unit ReLU layer and a linear output (1,663,370 parameters on 28x28);
    * ``logistic``: flatten and one linear layer (softmax regression).

    The output is logits; pair it with cross-entropy.
    """
    _check_inputs(architecture, image_shape, num_classes)
    channels, height, width = image_shape
    features = channels * height * width
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if architecture == "2nn":
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = _linear(features, HIDDEN_2NN)
        layers["relu1"] = nn.ReLU()
        layers["fc2"] = _linear(HIDDEN_2NN, HIDDEN_2NN)
        layers["relu2"] = nn.ReLU()
        layers["out"] = _linear(HIDDEN_2NN, num_classes)
    elif architecture == "cnn":
        c1, c2 = CNN_CHANNELS
        layers["conv1"] = _conv(channels, c1)
        layers["relu1"] = nn.ReLU()
        layers["pool1"] = nn.MaxPool2d(2)
        layers["conv2"] = _conv(c1, c2)
        layers["relu2"] = nn.ReLU()
        layers["pool2"] = nn.MaxPool2d(2)
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = _linear(c2 * (height // 4) * (width // 4), CNN_HIDDEN)
        layers["relu3"] = nn.ReLU()
        layers["out"] = _linear(CNN_HIDDEN, num_classes)
    else:
        layers["flatten"] = nn.Flatten()
        layers["out"] = _linear(features, num_classes)
    model = nn.Sequential(layers)
    _initialise(model, seed)
    return model


def count_parameters(architecture: str, image_shape: tuple[int, int, int], num_classes: int) -> int:
    """How many parameters `build_model` would give these inputs, without building (allocating) the model:
    a file or artifact that names an absurd image shape is refused before it costs any memory."""
    _check_inputs(architecture, image_shape, num_classes)
    channels, height, width = image_shape
    features = channels * height * width
    if architecture == "2nn":
        return _dense(features, HIDDEN_2NN) + _dense(HIDDEN_2NN, HIDDEN_2NN) + _dense(HIDDEN_2NN, num_classes)
    if architecture == "cnn":
        c1, c2 = CNN_CHANNELS
        convolutions = (channels * CNN_KERNEL**2 + 1) * c1 + (c1 * CNN_KERNEL**2 + 1) * c2
        flattened = c2 * (height // 4) * (width // 4)
        return convolutions + _dense(flattened, CNN_HIDDEN) + _dense(CNN_HIDDEN, num_classes)
    return _dense(features, num_classes)


def _check_inputs(architecture: str, image_shape: tuple[int, int, int], num_classes: int) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    if min(image_shape) < 1:
        raise ValueError(f"image_shape must be positive (C, H, W), got {image_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    _, height, width = image_shape
    if architecture == "cnn" and (height < 4 or width < 4):
        raise ValueError(f"the cnn pools twice by 2x2 and needs images of at least 4x4, got {height}x{width}")


def _dense(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


# Layers are created on the meta device and then given uninitialised CPU storage: constructing them on the
# CPU would run the default initialiser, which draws from (and advances) the global RNG.
def _linear(fan_in: int, fan_out: int) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, device="meta").to_empty(device="cpu")


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, CNN_KERNEL, padding=CNN_KERNEL // 2, device="meta")
    return conv.to_empty(device="cpu")


@torch.no_grad()
def _initialise(model: nn.Module, seed: int) -> None:
    """PyTorch's default initialisation for Linear/Conv (Kaiming-uniform, a=√5), from a private generator."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound, generator=gen)

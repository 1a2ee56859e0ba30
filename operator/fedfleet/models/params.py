"""A model's parameters as one flat float32 vector — the form the round engine aggregates.

The order is ``model.parameters()`` order (registration order). Buffers are not included: the models
fedfleet builds have none (no batch norm), so parameters are the whole state.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn


def flat_parameters(model: nn.Module) -> NDArray[np.float32]:
    """All parameters concatenated into a new float32 vector (a copy: later training does not change it)."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return flat.to(torch.float32).numpy().copy()


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_flat_parameters(model: nn.Module, vec: NDArray[np.floating]) -> None:
    """Overwrite the model's parameters, in place, with the values of a flat vector."""
    arr = np.asarray(vec)
    expected = num_parameters(model)
    if arr.ndim != 1:
        raise ValueError(f"parameter vector must be 1-D, got shape {arr.shape}")
    if arr.size != expected:
        raise ValueError(f"parameter vector has {arr.size} values but the model has {expected} parameters")
    source = as_tensor(np.ascontiguousarray(arr, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(source[offset : offset + n].view_as(p))
            offset += n


def parameter_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each parameter, in flat-vector order."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def as_tensor(array: NDArray[np.generic]) -> torch.Tensor:
    """A tensor over the array's memory when that is safe, else a copy.

    ``torch.from_numpy`` shares memory (no copy) but warns on read-only arrays, such as the cached datasets,
    because torch cannot mark a tensor read-only; those are copied instead.
    """
    if array.flags.writeable and array.flags.c_contiguous:
        return torch.from_numpy(array)
    return torch.tensor(array)

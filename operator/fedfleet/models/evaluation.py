"""Scoring a torch model on labelled examples: what the server does with its held-out split and a device
with its own held-out data. Both sides import it from here, so they score the same way."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fedfleet.models.params import as_tensor


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy
    accuracy: float
    num_examples: int


def evaluate(model: nn.Module, x: NDArray[np.floating], y: NDArray[np.integer], batch_size: int = 1000) -> EvalResult:
    """Mean cross-entropy and accuracy of the model on (x, y)."""
    n = int(np.shape(x)[0])
    if n == 0:
        raise ValueError("evaluate needs at least one example")
    if np.shape(y) != (n,):
        raise ValueError(f"y has shape {np.shape(y)}, expected ({n},) to match x")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    xt = as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    yt = as_tensor(np.ascontiguousarray(y, dtype=np.int64))
    model.eval()
    loss_sum = 0.0
    correct = 0
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            xb, yb = xt[start : start + batch_size], yt[start : start + batch_size]
            logits = model(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return EvalResult(loss=loss_sum / n, accuracy=correct / n, num_examples=n)

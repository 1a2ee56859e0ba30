"""Local training and evaluation, as a device runs them in a round.

A simulated run does thousands of these small rounds on a couple of cores, so the loop is lean: the data
becomes tensors once per call, each epoch gathers its shuffled copy in one indexing op and batches are
slices of it, and the SGD step is a fused multi-tensor update (cheaper per step than a torch.optim object).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from fedfleet.models.evaluation import EvalResult, evaluate
from fedfleet.models.params import as_tensor, flat_parameters, load_flat_parameters


@dataclass(frozen=True)
class LocalResult:
    """A device's round: its update (new − global weights), how many examples it trained on, its loss."""

    delta: NDArray[np.float32]
    num_examples: int
    train_loss: float  # mean cross-entropy over the last local epoch (without the proximal term)


def train_local(
    model: nn.Module,
    x: NDArray[np.floating],
    y: NDArray[np.integer],
    *,
    global_weights: NDArray[np.float32],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    proximal_mu: float = 0.0,
    seed: int,
) -> LocalResult:
    """Start from ``global_weights`` and run ``epochs`` passes of minibatch SGD over (x, y).

    ``batch_size`` 0 means one batch of all local data (B=∞ in McMahan et al. 2017). With
    ``proximal_mu`` μ > 0 the objective is FedProx's cross-entropy + μ/2·‖w − w_global‖² (Li et al. 2020);
    its gradient μ(w − w_global) is added to each step directly, which is the same SGD step as
    differentiating the extra loss term but cheaper. Batches are shuffled by a generator seeded from
    ``seed``, so the same inputs give a bit-identical result.
    """
    n = int(np.shape(x)[0])
    if n == 0:
        raise ValueError("train_local needs at least one local example")
    if np.shape(y) != (n,):
        raise ValueError(f"y has shape {np.shape(y)}, expected ({n},) to match x")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative (0 = whole local dataset), got {batch_size}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if not proximal_mu >= 0:
        raise ValueError(f"proximal_mu must be non-negative, got {proximal_mu}")

    start_vec = np.ascontiguousarray(global_weights, dtype=np.float32)
    load_flat_parameters(model, start_vec)
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    xt = as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    yt = as_tensor(np.ascontiguousarray(y, dtype=np.int64))
    step = n if batch_size == 0 else min(batch_size, n)
    gen = torch.Generator().manual_seed(seed)

    model.train()
    loss_sum = torch.zeros(())
    for epoch in range(epochs):
        if step < n:
            perm = torch.randperm(n, generator=gen)
            xe, ye = xt[perm], yt[perm]
        else:  # one full batch: the order of examples does not change the gradient
            xe, ye = xt, yt
        last_epoch = epoch == epochs - 1
        for start in range(0, n, step):
            xb, yb = xe[start : start + step], ye[start : start + step]
            loss = F.cross_entropy(model(xb), yb)
            # autograd.grad returns the gradients instead of accumulating them into .grad: no zeroing.
            grads = list(torch.autograd.grad(loss, params))
            with torch.no_grad():
                if proximal_mu > 0:
                    torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=proximal_mu)
                torch._foreach_add_(params, grads, alpha=-learning_rate)
                if last_epoch:
                    loss_sum += loss.detach() * yb.shape[0]
    delta = flat_parameters(model) - start_vec
    return LocalResult(delta=delta, num_examples=n, train_loss=float(loss_sum) / n)


__all__ = ["EvalResult", "LocalResult", "evaluate", "train_local"]

"""How many CPU threads torch may use in this process."""

from __future__ import annotations

import os

import torch


def configure_torch_threads() -> int:
    """Use FEDFLEET_TORCH_THREADS, default 1.

    Device models and batches are small: one thread avoids the fork-join overhead that makes multi-threaded
    kernels slower here, and it leaves the other cores to the other processes of a run (aggregator, fleet).
    """
    raw = os.environ.get("FEDFLEET_TORCH_THREADS", "1")
    try:
        threads = max(1, int(raw))
    except ValueError:
        raise ValueError(f"FEDFLEET_TORCH_THREADS must be a positive integer, got {raw!r}") from None
    torch.set_num_threads(threads)
    return threads

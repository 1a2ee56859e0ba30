"""The server's state after a round, saved atomically so that a resumed job continues exactly."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedfleet.persist.atomic import atomic_write_bytes

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable, from another format, or from a different job."""


@dataclass
class Checkpoint:
    round: int  # the last round that finished (succeeded or failed)
    # The model's flat float32 vector (what models.vector.Vector names); spelled out here because persist and
    # models share the bottom floor and so do not import each other.
    weights: NDArray[np.float32]
    optimizer_state: dict[str, np.ndarray]
    spec_digest: str  # a checkpoint only resumes the job spec it was written for
    totals: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON state of optional parts (privacy accounting)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    meta = {
        "format": FORMAT_VERSION,
        "round": ckpt.round,
        "spec_digest": ckpt.spec_digest,
        "totals": ckpt.totals,
        "extra": ckpt.extra,
    }
    arrays: dict[str, np.ndarray] = {"weights": ckpt.weights}
    arrays.update({f"opt.{k}": v for k, v in ckpt.optimizer_state.items()})
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint | None:
    """The saved checkpoint, or None if there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != FORMAT_VERSION:
                raise CheckpointError(f"{path}: checkpoint format {meta.get('format')} is not {FORMAT_VERSION}")
            optimizer_state = {k[4:]: np.array(data[k]) for k in data.files if k.startswith("opt.")}
            return Checkpoint(
                round=int(meta["round"]),
                weights=np.array(data["weights"], dtype=np.float32),
                optimizer_state=optimizer_state,
                spec_digest=str(meta["spec_digest"]),
                totals=dict(meta.get("totals", {})),
                extra=dict(meta.get("extra", {})),
            )
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint: {exc}") from None

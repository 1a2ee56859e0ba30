from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedfleet.persist.atomic import atomic_writer
from fedfleet.persist.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


def test_checkpoint_round_trips_exactly(tmp_path: Path) -> None:
    weights = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    ckpt = Checkpoint(
        round=7,
        weights=weights,
        optimizer_state={"m": weights * 2, "v": weights**2},
        spec_digest="abc",
        totals={"rounds_failed": 1},
    )
    path = tmp_path / "c.npz"
    save_checkpoint(path, ckpt)
    back = load_checkpoint(path)
    assert back is not None
    assert back.round == 7 and back.spec_digest == "abc" and back.totals == {"rounds_failed": 1}
    np.testing.assert_array_equal(back.weights, weights)
    np.testing.assert_array_equal(back.optimizer_state["v"], weights**2)


def test_missing_checkpoint_is_none_and_garbage_is_a_clear_error(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "none.npz") is None
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(bad)


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state"]  # no temporary file left behind


def test_the_checkpoint_fingerprint_ignores_how_the_job_runs_but_not_what_it_computes() -> None:
    from fedfleet.api.federatedjob import FederatedJobSpec
    from fedfleet.engine.server import spec_digest

    base = FederatedJobSpec.model_validate({"rounds": 5})
    moved = FederatedJobSpec.model_validate(
        {"rounds": 5, "suspend": True, "activeDeadlineSeconds": 600, "aggregator": {"port": 7000}}
    )
    assert spec_digest(base) == spec_digest(moved)
    assert spec_digest(base) != spec_digest(FederatedJobSpec.model_validate({"rounds": 6}))
    assert spec_digest(base) != spec_digest(FederatedJobSpec.model_validate({"rounds": 5, "seed": 1}))

"""The embedded runtime under hostile conditions: it counts what goes wrong and keeps going."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedfleet.runtime.local import LocalRuntime
from fl_experiments import make_job


def test_diverging_updates_are_rejected_and_counted_not_fatal(tmp_path: Path) -> None:
    # Half the fleet boosts its update a millionfold with a huge learning rate: the honest devices soon train
    # from a blown-up model and send NaN/Inf. Those updates must be rejected and counted, never crash the run.
    job = make_job(
        "diverge",
        rounds=6,
        seed=3,
        model={"architecture": "2nn"},
        training={"localEpochs": 1, "batchSize": 10, "learningRate": 0.5},
        cohort={"clientsPerRound": 6, "minReports": 1},
        evaluation={"serverEvery": 1},
        simulation={
            "devices": 20,
            "dataset": "digits",
            "testSamples": 200,
            "byzantine": {"fraction": 0.5, "attack": "modelReplacement", "scale": 1e6},
        },
    )
    runtime = LocalRuntime(job, tmp_path / "run")
    runtime.prepare(resume=False)
    records = runtime.run()
    assert [r.round for r in records] == list(range(1, 7))
    assert sum(r.rejected for r in records) > 0
    assert runtime.server.totals.rejected.get("non_finite", 0) > 0
    assert not records[-1].succeeded  # every update is NaN by then: the round fails ...
    assert np.isfinite(runtime.final_weights()).all()  # ... and leaves the model as it was
    for r in records:
        assert r.participants + r.dropped + r.late + r.surplus + r.rejected == r.invited

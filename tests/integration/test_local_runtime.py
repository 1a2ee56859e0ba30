"""The embedded runtime under hostile conditions: it counts what goes wrong and keeps going."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedfleet.api.federatedjob import FederatedJob
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


def churn_job(over_selection: float, dropout: float) -> FederatedJob:
    return make_job(
        "churn",
        rounds=40,
        seed=4,
        model={"architecture": "logistic"},
        training={"localEpochs": 1, "batchSize": 20, "learningRate": 0.1},
        cohort={"clientsPerRound": 10, "overSelection": over_selection, "minReports": 1, "roundDeadlineSeconds": 600},
        evaluation={"serverEvery": 0},
        simulation={"devices": 60, "dataset": "digits", "testSamples": 0, "dropoutProbability": dropout},
    )


def test_churn_tracks_the_fleets_dropout_not_the_over_selection(tmp_path: Path) -> None:
    dropout = 0.3
    # Every invitee needed: what the rounds lost is the dropout (400 invitations: ±0.07 is three σ).
    exact = LocalRuntime(churn_job(1.0, dropout), tmp_path / "exact")
    exact.prepare(resume=False)
    exact.run()
    assert exact.server.totals.churn_rate == pytest.approx(dropout, abs=0.07)

    # Half again as many invited as needed: the spares left when a round fills are surplus, not churn.
    spare = LocalRuntime(churn_job(1.5, dropout), tmp_path / "spare")
    spare.prepare(resume=False)
    records = spare.run()
    surplus = sum(r.surplus for r in records)
    assert surplus > 0
    # A device that dropped out of a round that filled anyway looks like a spare to the server, so churn
    # here sits below the dropout — and far below what counting every spare as lost would claim.
    churn = spare.server.totals.churn_rate
    assert 0.1 <= churn <= dropout + 0.07, churn
    invited = sum(r.invited for r in records)
    assert (sum(r.lost for r in records) + surplus) / invited > churn + 0.1

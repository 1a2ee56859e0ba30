"""The rules of one training round, whatever the transport."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.engine.round import RoundConfig, TrainingRound, UpdateRejected
from fedfleet.engine.types import ModelUpdate, Outcome, RejectReason
from fedfleet.strategies.fedavg import FedAvg

DIM = 8


def make_round(cohort: tuple[str, ...] = ("a", "b", "c", "d"), target: int = 3, minimum: int = 2) -> TrainingRound:
    config = RoundConfig(
        number=5,
        cohort=cohort,
        target_reports=target,
        min_reports=minimum,
        deadline=100.0,
        dim=DIM,
        max_update_bytes=DIM * 4,
    )
    return TrainingRound(config, FedAvg())


def update(device: str, value: float, n: int = 10, round_number: int = 5) -> ModelUpdate:
    return ModelUpdate(device, round_number, n, np.full(DIM, value, dtype=np.float32), train_loss=1.0)


def test_weighted_average_of_accepted_updates() -> None:
    r = make_round()
    assert r.submit(update("a", 1.0, n=10), now=1) == Outcome.COMPLETED
    assert r.submit(update("b", 4.0, n=30), now=2) == Outcome.COMPLETED
    result = r.close()
    assert result.succeeded
    assert result.aggregate is not None
    np.testing.assert_allclose(result.aggregate, np.full(DIM, (10 * 1 + 30 * 4) / 40))
    assert result.outcomes == {
        "a": Outcome.COMPLETED,
        "b": Outcome.COMPLETED,
        "c": Outcome.DROPPED,
        "d": Outcome.DROPPED,
    }


def test_reports_after_the_round_filled_are_surplus_and_after_its_deadline_late() -> None:
    r = make_round(target=2)
    r.submit(update("a", 1.0), now=1)
    r.submit(update("b", 1.0), now=2)
    assert r.is_full
    assert r.submit(update("c", 100.0), now=3) == Outcome.SURPLUS
    assert make_round().submit(update("d", 1.0), now=101) == Outcome.LATE
    result = r.close()
    assert result.aggregate is not None
    np.testing.assert_allclose(result.aggregate, 1.0)
    # "d" never reported to this round: the round filled, so it is a spare, not a loss.
    assert result.outcomes == {
        "a": Outcome.COMPLETED,
        "b": Outcome.COMPLETED,
        "c": Outcome.SURPLUS,
        "d": Outcome.SURPLUS,
    }
    assert result.bytes_received == 3 * DIM * 4


def test_invitees_silent_at_the_close_are_surplus_if_the_round_filled_else_dropped() -> None:
    filled = make_round(target=2)
    filled.submit(update("a", 1.0), now=1)
    filled.submit(update("b", 1.0), now=2)
    assert filled.close().count(Outcome.SURPLUS) == 2
    short = make_round(target=3)
    short.submit(update("a", 1.0), now=1)
    short.submit(update("b", 1.0), now=2)
    outcomes = short.close().outcomes
    assert (outcomes["c"], outcomes["d"]) == (Outcome.DROPPED, Outcome.DROPPED)


def test_round_fails_below_min_reports() -> None:
    r = make_round(minimum=2)
    r.submit(update("a", 1.0), now=1)
    result = r.close()
    assert not result.succeeded
    assert result.failure is not None and "1 of the 2" in result.failure


BAD_UPDATES = [
    (update("zz", 1.0), RejectReason.NOT_IN_COHORT, "not in round 5's cohort"),
    (update("a", 1.0, round_number=4), RejectReason.WRONG_ROUND, "round 4, the current round is 5"),
    (update("a", 1.0, round_number=6), RejectReason.WRONG_ROUND, "round 6"),
    (ModelUpdate("a", 5, 10, np.ones(DIM, dtype=np.float64)), RejectReason.TOO_LARGE, "limit is 32"),
    (ModelUpdate("a", 5, 10, np.ones(DIM, dtype=np.int32)), RejectReason.DTYPE, "expected float32"),
    (ModelUpdate("a", 5, 10, np.ones(DIM - 1, dtype=np.float32)), RejectReason.SHAPE, "expected (8,)"),
    (ModelUpdate("a", 5, 10, np.ones((2, 4), dtype=np.float32)), RejectReason.SHAPE, "expected (8,)"),
    (ModelUpdate("a", 5, 0, np.ones(DIM, dtype=np.float32)), RejectReason.BAD_WEIGHT, "num_examples"),
    (update("a", float("nan")), RejectReason.NON_FINITE, "NaN or Inf"),
    (update("a", float("inf")), RejectReason.NON_FINITE, "NaN or Inf"),
]


@pytest.mark.parametrize(("bad", "reason", "message"), BAD_UPDATES)
def test_rejected_update_leaves_the_round_unchanged(bad: ModelUpdate, reason: RejectReason, message: str) -> None:
    clean, dirty = make_round(), make_round()
    for r in (clean, dirty):
        r.submit(update("b", 2.0), now=1)
    with pytest.raises(UpdateRejected) as info:
        dirty.submit(bad, now=2)
    assert info.value.reason == reason
    assert message in info.value.message
    # the device can still send a good update, and the result equals the round that never saw the bad one
    for r in (clean, dirty):
        r.submit(update("a", 1.0), now=3)
    a, b = clean.close(), dirty.close()
    assert a.aggregate is not None and b.aggregate is not None
    np.testing.assert_array_equal(a.aggregate, b.aggregate)
    assert a.outcomes == b.outcomes
    assert b.rejected_reasons == {reason: 1}


def test_replayed_update_is_rejected() -> None:
    r = make_round()
    r.submit(update("a", 1.0), now=1)
    with pytest.raises(UpdateRejected) as info:
        r.submit(update("a", 50.0), now=2)
    assert info.value.reason == RejectReason.DUPLICATE
    r.submit(update("b", 1.0), now=3)
    result = r.close()
    assert result.aggregate is not None
    np.testing.assert_allclose(result.aggregate, 1.0)


def test_device_that_only_sent_bad_updates_ends_rejected() -> None:
    r = make_round()
    with pytest.raises(UpdateRejected):
        r.submit(update("c", float("nan")), now=1)
    r.submit(update("a", 1.0), now=1)
    r.submit(update("b", 1.0), now=1)
    assert r.close().outcomes["c"] == Outcome.REJECTED


def test_close_is_idempotent_and_late_after_close() -> None:
    r = make_round()
    r.submit(update("a", 1.0), now=1)
    r.submit(update("b", 1.0), now=1)
    first = r.close()
    assert r.submit(update("c", 9.0), now=2) == Outcome.LATE
    assert r.close() is first


def test_an_overflowing_aggregate_fails_the_round_and_keeps_the_model() -> None:
    from fedfleet.api.federatedjob import FederatedJobSpec
    from fedfleet.engine.server import FederatedServer

    spec = FederatedJobSpec.model_validate(
        {
            "rounds": 3,
            "cohort": {"clientsPerRound": 2},
            "simulation": {"devices": 2},
            "aggregation": {"strategy": "fedavgm"},
        }
    )
    server = FederatedServer(spec, np.zeros(DIM, dtype=np.float32))
    training_round = server.start_round(["a", "b"], now=0.0)
    big = np.full(DIM, 3e38, dtype=np.float32)  # finite, and so is their mean: the first step succeeds ...
    training_round.submit(ModelUpdate("a", 1, 1, big), now=1)
    training_round.submit(ModelUpdate("b", 1, 5, big), now=1)
    assert server.finish_round(training_round).succeeded
    np.testing.assert_array_equal(server.weights, big)
    before = server.optimizer.state_dict()

    training_round = server.start_round(["a", "b"], now=0.0)  # ... but a second one would overflow float32
    training_round.submit(ModelUpdate("a", 2, 1, big), now=1)
    training_round.submit(ModelUpdate("b", 2, 5, big), now=1)
    result = server.finish_round(training_round)
    assert not result.succeeded and result.failure is not None and "non-finite" in result.failure
    np.testing.assert_array_equal(server.weights, big)
    assert server.round == 2 and server.totals.rounds_failed == 1
    after = server.optimizer.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)

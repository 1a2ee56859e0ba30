"""From `spec.aggregation` to the rule and the server optimizer: every strategy, with its parameters."""

from __future__ import annotations

from fedfleet.api.federatedjob import AggregationSpec, Strategy
from fedfleet.api.rules import INDIVIDUAL_UPDATE_STRATEGIES
from fedfleet.strategies.factory import build_strategy
from fedfleet.strategies.fedadagrad import FedAdagrad
from fedfleet.strategies.fedadam import FedAdam
from fedfleet.strategies.fedavg import FedAvgServer
from fedfleet.strategies.fedavgm import FedAvgM
from fedfleet.strategies.fedyogi import FedYogi
from fedfleet.strategies.krum import MultiKrum
from fedfleet.strategies.norm_bounding import NormBounding
from fedfleet.strategies.trimmed_mean import TrimmedMean

EXPECTED = {
    "fedavg": ("fedavg", FedAvgServer),
    "fedprox": ("fedavg", FedAvgServer),
    "fedavgm": ("fedavg", FedAvgM),
    "fedadam": ("fedavg", FedAdam),
    "fedyogi": ("fedavg", FedYogi),
    "fedadagrad": ("fedavg", FedAdagrad),
    "median": ("median", FedAvgServer),
    "trimmedMean": ("trimmedMean", FedAvgServer),
    "krum": ("krum", FedAvgServer),
    "multiKrum": ("multiKrum", FedAvgServer),
    "normBounding": ("normBounding", FedAvgServer),
}


def test_every_strategy_has_a_rule_and_optimizer() -> None:
    assert {s.value for s in Strategy} == set(EXPECTED)
    for name in Strategy:
        rule, opt = build_strategy(AggregationSpec(strategy=name, server_learning_rate=0.3))
        assert (rule.name, type(opt)) == EXPECTED[name]
        assert opt.learning_rate == 0.3
        assert set(opt.state_dict()) == {"step"}  # state waits for the first round, which knows the model size


def test_factory_passes_the_spec_parameters_through() -> None:
    spec = AggregationSpec.model_validate(
        {
            "strategy": "multiKrum",
            "byzantineCount": 2,
            "multiKrumSelect": 4,
            "trimFraction": 0.2,
            "normBound": 3.5,
            "serverMomentum": 0.5,
            "beta1": 0.7,
            "beta2": 0.8,
            "tau": 0.01,
        }
    )
    rule, _ = build_strategy(spec)
    assert isinstance(rule, MultiKrum) and (rule.byzantine_count, rule.select) == (2, 4)
    trimmed, _ = build_strategy(spec.model_copy(update={"strategy": Strategy.TRIMMED_MEAN}))
    assert isinstance(trimmed, TrimmedMean) and trimmed.trim_fraction == 0.2
    bounded, _ = build_strategy(spec.model_copy(update={"strategy": Strategy.NORM_BOUNDING}))
    assert isinstance(bounded, NormBounding) and bounded.norm_bound == 3.5
    _, momentum = build_strategy(spec.model_copy(update={"strategy": Strategy.FEDAVGM}))
    assert isinstance(momentum, FedAvgM) and momentum.momentum == 0.5
    _, yogi = build_strategy(spec.model_copy(update={"strategy": Strategy.FEDYOGI}))
    assert isinstance(yogi, FedYogi) and (yogi.beta1, yogi.beta2, yogi.tau) == (0.7, 0.8, 0.01)


def test_the_strategies_the_spec_keeps_from_secure_aggregation_are_those_whose_rules_need_single_updates() -> None:
    # The spec refuses these under secure aggregation and DP, which only ever reveal a sum; a rule that does
    # not stream keeps every update, so it would need what they hide.
    for strategy in Strategy:
        rule, _ = build_strategy(AggregationSpec(strategy=strategy))
        assert (strategy in INDIVIDUAL_UPDATE_STRATEGIES) == (not rule.streaming), strategy

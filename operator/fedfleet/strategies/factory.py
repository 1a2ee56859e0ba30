"""From a job's `spec.aggregation` to the aggregation rule and the server optimizer that implement it."""

from __future__ import annotations

from typing import assert_never

from fedfleet.api.federatedjob import AggregationSpec, Strategy
from fedfleet.strategies.base import AggregationRule, ServerOptimizer
from fedfleet.strategies.fedadagrad import FedAdagrad
from fedfleet.strategies.fedadam import FedAdam
from fedfleet.strategies.fedavg import FedAvg, FedAvgServer
from fedfleet.strategies.fedavgm import FedAvgM
from fedfleet.strategies.fedyogi import FedYogi
from fedfleet.strategies.krum import Krum, MultiKrum
from fedfleet.strategies.median import Median
from fedfleet.strategies.norm_bounding import NormBounding
from fedfleet.strategies.trimmed_mean import TrimmedMean

STRATEGY_NAMES: tuple[str, ...] = tuple(s.value for s in Strategy)

# Rules that look at each update on its own. Secure aggregation only ever reveals the sum, so it cannot
# serve them.
_INDIVIDUAL = frozenset({Strategy.MEDIAN, Strategy.TRIMMED_MEAN, Strategy.KRUM, Strategy.MULTI_KRUM})


def parse_strategy(value: Strategy | str) -> Strategy:
    """The Strategy named by `value` (spec models hold it as a plain string), or a ValueError listing the names."""
    try:
        return Strategy(value)
    except ValueError:
        raise ValueError(f"unknown strategy {value!r}; expected one of {', '.join(STRATEGY_NAMES)}") from None


def needs_individual_updates(strategy: Strategy | str) -> bool:
    return parse_strategy(strategy) in _INDIVIDUAL


def build_strategy(spec: AggregationSpec, dim_hint: int | None = None) -> tuple[AggregationRule, ServerOptimizer]:
    """The rule and optimizer of `spec.strategy`. `dim_hint` (the model size) allocates optimizer state now,
    so a checkpoint taken before the first round already holds it."""
    strategy = parse_strategy(spec.strategy)
    lr = spec.server_learning_rate
    plain = FedAvgServer(lr, dim_hint)
    match strategy:
        case Strategy.FEDAVG | Strategy.FEDPROX:  # FedProx differs only in the devices' proximal term
            return FedAvg(), plain
        case Strategy.FEDAVGM:
            return FedAvg(), FedAvgM(lr, spec.server_momentum, dim_hint)
        case Strategy.FEDADAM:
            return FedAvg(), FedAdam(lr, spec.beta1, spec.beta2, spec.tau, dim_hint)
        case Strategy.FEDYOGI:
            return FedAvg(), FedYogi(lr, spec.beta1, spec.beta2, spec.tau, dim_hint)
        case Strategy.FEDADAGRAD:
            return FedAvg(), FedAdagrad(lr, spec.beta1, spec.tau, dim_hint)
        case Strategy.MEDIAN:
            return Median(), plain
        case Strategy.TRIMMED_MEAN:
            return TrimmedMean(spec.trim_fraction), plain
        case Strategy.KRUM:
            return Krum(spec.byzantine_count), plain
        case Strategy.MULTI_KRUM:
            return MultiKrum(spec.byzantine_count, spec.multi_krum_select), plain
        case Strategy.NORM_BOUNDING:
            return NormBounding(spec.norm_bound), plain
        case _:
            assert_never(strategy)

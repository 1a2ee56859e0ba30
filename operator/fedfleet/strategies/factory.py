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


def build_strategy(spec: AggregationSpec) -> tuple[AggregationRule, ServerOptimizer]:
    """The rule and optimizer of `spec.strategy`. The optimizer allocates its state in the first round."""
    strategy = Strategy(spec.strategy)  # the validated spec holds the enum's value, a plain string
    lr = spec.server_learning_rate
    plain = FedAvgServer(lr)
    match strategy:
        case Strategy.FEDAVG | Strategy.FEDPROX:  # FedProx differs only in the devices' proximal term
            return FedAvg(), plain
        case Strategy.FEDAVGM:
            return FedAvg(), FedAvgM(lr, spec.server_momentum)
        case Strategy.FEDADAM:
            return FedAvg(), FedAdam(lr, spec.beta1, spec.beta2, spec.tau)
        case Strategy.FEDYOGI:
            return FedAvg(), FedYogi(lr, spec.beta1, spec.beta2, spec.tau)
        case Strategy.FEDADAGRAD:
            return FedAvg(), FedAdagrad(lr, spec.beta1, spec.tau)
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

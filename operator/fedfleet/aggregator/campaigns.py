"""Federated evaluation campaigns: after a round, chosen devices score the new model on held-out data they
never trained on; the server only ever sees their scores."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedfleet.engine.records import Evaluation
from fedfleet.proto.v1 import aggregator_pb2 as pb


@dataclass
class EvaluationCampaign:
    version: int  # the model version the devices score
    chosen: frozenset[str]
    deadline: float  # job seconds
    reports: dict[str, pb.EvaluationReport] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.reports) == len(self.chosen)

    def wants(self, device_id: str) -> bool:
        return device_id in self.chosen and device_id not in self.reports

    def accept(self, device_id: str, report: pb.EvaluationReport) -> bool:
        """Keep a chosen device's first report of this version; anything else is ignored."""
        if not self.wants(device_id) or report.model_version != self.version:
            return False
        self.reports[device_id] = report
        return True

    def result(self) -> Evaluation | None:
        """The example-weighted mean of the reports, or None when nobody reported."""
        reports = list(self.reports.values())
        total = sum(r.num_examples for r in reports)
        if total == 0:
            return None
        loss = sum(r.loss * r.num_examples for r in reports) / total
        accuracy = sum(r.accuracy * r.num_examples for r in reports) / total
        return Evaluation(loss, accuracy, total)

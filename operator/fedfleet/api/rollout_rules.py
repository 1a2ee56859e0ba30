"""The cross-field rules of a ModelRollout spec, each declared once (see `fedfleet.api.rules` for the idea).

`ModelRolloutSpec` checks the predicates; `crd.py` writes the CEL expressions into the CRD. CEL reads the stored
object, defaults applied by the API server: the lists (`analysis.metrics`, `analysis.background`, `steps`,
`selector.matchExpressions`, a requirement's `values`) and the condition strings default to empty, so only the
optional fields without a default (`model.*`, a step's `setWeight` / `pause` / `analysis`, a provider's
`prometheus` / `builtin`) need `has()`. Rules over a list report the list as their field: a CEL `fieldPath`
cannot name an element, so the models' message names it instead, in its ` ({name})` placeholder.

`isSorted()` is from the Kubernetes CEL list library (in every API server since 1.24).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from fedfleet.api.rules import Rule

if TYPE_CHECKING:
    from fedfleet.api.modelrollout import ModelRolloutSpec, Step

#: Operators of a selector requirement that need values (the others take none), as in Kubernetes.
VALUED_OPERATORS: tuple[str, ...] = ("In", "NotIn")


def _actions(step: Step) -> list[str]:
    set_ = {"setWeight": step.set_weight, "pause": step.pause, "analysis": step.analysis}
    return [name for name, value in set_.items() if value is not None]


def _first_step_without_one_action(spec: ModelRolloutSpec) -> str | None:
    for index, step in enumerate(spec.steps):
        actions = _actions(step)
        if len(actions) != 1:
            return f"steps[{index}] sets {' and '.join(actions) or 'none'}"
    return None


def _weights(spec: ModelRolloutSpec) -> list[int]:
    return [step.set_weight for step in spec.steps if step.set_weight is not None]


def _first_decrease(spec: ModelRolloutSpec) -> str | None:
    weights = _weights(spec)
    for before, after in itertools.pairwise(weights):
        if after < before:
            return f"{after} after {before}"
    return None


def _metric_names(spec: ModelRolloutSpec) -> set[str]:
    return {metric.name for metric in spec.analysis.metrics}


def _metrics_without_a_condition(spec: ModelRolloutSpec) -> list[str]:
    return [m.name for m in spec.analysis.metrics if m.success_condition == "" and m.failure_condition == ""]


def _metrics_without_one_provider(spec: ModelRolloutSpec) -> list[str]:
    return [m.name for m in spec.analysis.metrics if (m.provider.prometheus is None) == (m.provider.builtin is None)]


def _repeated_metric_names(spec: ModelRolloutSpec) -> list[str]:
    counts = Counter(metric.name for metric in spec.analysis.metrics)
    return [name for name, count in counts.items() if count > 1]


def _unknown_step_metrics(spec: ModelRolloutSpec) -> Iterator[str]:
    known = _metric_names(spec)
    for index, step in enumerate(spec.steps):
        if step.analysis is not None:
            for name in step.analysis.metrics:
                if name not in known:
                    yield f"steps[{index}] names {name}"


def _unknown_background_metrics(spec: ModelRolloutSpec) -> list[str]:
    known = _metric_names(spec)
    return [name for name in spec.analysis.background if name not in known]


def _metrics_against_control(spec: ModelRolloutSpec) -> list[str]:
    return [metric.name for metric in spec.analysis.metrics if metric.baseline == "control"]


def _requirements_with_wrong_values(spec: ModelRolloutSpec) -> list[str]:
    return [
        f"{r.key} {r.operator} with {len(r.values)} values"
        for r in spec.selector.match_expressions
        if (r.operator in VALUED_OPERATORS) != (len(r.values) > 0)
    ]


def _listed(names: Iterable[str]) -> str:
    return ", ".join(names)


_METRICS = "self.analysis.metrics"

#: In the order they are checked: the models report the first rule a spec breaks. What is rolled out first,
#: then the steps, then the analysis they name, then the devices.
ROLLOUT_RULES: tuple[Rule[ModelRolloutSpec], ...] = (
    Rule(
        name="one-model-source",
        field="model",
        message="set exactly one of federatedJob and artifact",
        cel="has(self.model.federatedJob) != has(self.model.artifact)",
        holds=lambda s: (s.model.federated_job is None) != (s.model.artifact is None),
    ),
    Rule(
        name="at-least-one-step",
        field="steps",
        message="a rollout needs at least one step",
        cel="size(self.steps) > 0",
        holds=lambda s: len(s.steps) > 0,
    ),
    Rule(
        name="one-action-per-step",
        field="steps",
        message="every step must set exactly one of setWeight, pause and analysis ({step})",
        cel="self.steps.all(s, (has(s.setWeight) ? 1 : 0) + (has(s.pause) ? 1 : 0) + (has(s.analysis) ? 1 : 0) == 1)",
        holds=lambda s: _first_step_without_one_action(s) is None,
        values=lambda s: {"step": _first_step_without_one_action(s)},
    ),
    Rule(
        name="weights-never-decrease",
        field="steps",
        message="setWeight must not decrease from one step to a later one ({weights})",
        cel="self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
        holds=lambda s: _first_decrease(s) is None,
        values=lambda s: {"weights": _first_decrease(s)},
    ),
    Rule(
        name="metric-has-one-provider",
        field="analysis.metrics",
        message="every metric sets exactly one provider, prometheus or builtin ({metrics})",
        cel=f"{_METRICS}.all(m, has(m.provider.prometheus) != has(m.provider.builtin))",
        holds=lambda s: not _metrics_without_one_provider(s),
        values=lambda s: {"metrics": _listed(_metrics_without_one_provider(s))},
    ),
    Rule(
        name="metric-has-a-condition",
        field="analysis.metrics",
        message="every metric needs a successCondition or a failureCondition ({metrics})",
        cel=f"{_METRICS}.all(m, m.successCondition != '' || m.failureCondition != '')",
        holds=lambda s: not _metrics_without_a_condition(s),
        values=lambda s: {"metrics": _listed(_metrics_without_a_condition(s))},
    ),
    Rule(
        name="metric-names-unique",
        field="analysis.metrics",
        message="metric names must be unique ({names})",
        cel=f"{_METRICS}.all(a, {_METRICS}.exists_one(b, b.name == a.name))",
        holds=lambda s: not _repeated_metric_names(s),
        values=lambda s: {"names": _listed(_repeated_metric_names(s))},
    ),
    Rule(
        name="analysis-steps-name-metrics",
        field="steps",
        message="an analysis step may only name metrics of analysis.metrics ({unknown})",
        cel=f"self.steps.all(s, !has(s.analysis) || s.analysis.metrics.all(n, {_METRICS}.exists(m, m.name == n)))",
        holds=lambda s: next(_unknown_step_metrics(s), None) is None,
        values=lambda s: {"unknown": _listed(_unknown_step_metrics(s))},
    ),
    Rule(
        name="background-names-metrics",
        field="analysis.background",
        message="may only name metrics of analysis.metrics ({unknown})",
        cel=f"self.analysis.background.all(n, {_METRICS}.exists(m, m.name == n))",
        holds=lambda s: not _unknown_background_metrics(s),
        values=lambda s: {"unknown": _listed(_unknown_background_metrics(s))},
    ),
    Rule(
        name="control-baseline-needs-control-cohort",
        field="controlCohort",
        message="must be true when a metric has baseline: control ({metrics})",
        cel=f"self.controlCohort || {_METRICS}.all(m, m.baseline != 'control')",
        holds=lambda s: s.control_cohort or not _metrics_against_control(s),
        values=lambda s: {"metrics": _listed(_metrics_against_control(s))},
    ),
    Rule(
        name="selector-values-fit-operator",
        field="selector.matchExpressions",
        message="In and NotIn need at least one value; Exists and DoesNotExist take none ({requirements})",
        cel="self.selector.matchExpressions.all(e, "
        "(e.operator == 'In' || e.operator == 'NotIn') == (size(e.values) > 0))",
        holds=lambda s: not _requirements_with_wrong_values(s),
        values=lambda s: {"requirements": _listed(_requirements_with_wrong_values(s))},
    ),
)

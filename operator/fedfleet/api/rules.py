"""The cross-field rules of a FederatedJob spec, and the rules on its name, each declared once.

A rule is the field it is about, a message, a CEL expression and a Python predicate. `FederatedJobSpec`
checks the predicates, so `fedfleet run`, the operator and the aggregator refuse a bad job; `crd.py` writes
the CEL expressions into the CRD as `x-kubernetes-validations`, so `kubectl apply` refuses it too. Both are
made from `CROSS_FIELD_RULES`, so a rule cannot exist on one side only. The unit tests hold one manifest per
rule that breaks that rule alone, and the e2e tests send such manifests to a real API server, which is
where a CEL expression that disagrees with its predicate would show.

Single-field bounds (ranges, enums, patterns) are not here: they are `Field(...)` constraints on the models,
and the CRD's schema is generated from those.

`NAME_RULES` say which names a job can have: its children are named after it, and Kubernetes is stricter
about some of their names than about a custom resource's. A job whose Service could never be created is
refused at `kubectl apply` (CEL on `self.metadata.name`, at the CRD's root) and by `fedfleet run`, instead of
being accepted and failing in the operator.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from fedfleet.data.catalog import DATASET_SIZES

if TYPE_CHECKING:
    # Only for the predicates' annotations: the models import this table at run time to check it.
    from fedfleet.api.federatedjob import FederatedJobSpec

#: Strategies that look at each update on its own, so they cannot work on a masked or noised sum. Wire
#: names, as the CEL rules compare them (`Strategy` is a StrEnum, so the models compare equal to them).
INDIVIDUAL_UPDATE_STRATEGIES: tuple[str, ...] = ("median", "trimmedMean", "krum", "multiKrum")
#: Strategies that need only the sum of the updates. With the tuple above they make up every `Strategy`
#: (a test checks), so a new strategy has to say whether secure aggregation and DP can work with it.
SUM_STRATEGIES: tuple[str, ...] = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "normBounding")
KRUM_STRATEGIES: tuple[str, ...] = ("krum", "multiKrum")

# A placeholder is written ` ({name})` at the end of a phrase: the Python message fills in the spec's
# value; the CEL message, which is fixed text, leaves the whole parenthesis out.
_PLACEHOLDER = re.compile(r" \(\{(\w+)\}\)")


#: The spec a rule reads: FederatedJobSpec here, ModelRolloutSpec in rollout_rules.py.
SpecT = TypeVar("SpecT")


def _no_values(spec: object) -> Mapping[str, object]:
    return {}


@dataclass(frozen=True)
class Rule(Generic[SpecT]):
    """One cross-field rule. `holds` and `cel` say the same thing: true when the spec keeps the rule.

    `holds` reads the models (snake_case, defaults applied); `cel` reads the stored object (camelCase,
    defaults applied by the API server, so only fields without a default need `has()`).
    """

    name: str  # identifies the rule in tests (two rules may name the same field)
    # Path the rule is reported for, below the node whose CEL rule it is (`spec` for the spec's rules, the
    # object for NAME_RULES): SpecError.field and the CEL fieldPath.
    field: str
    message: str  # what to fix, naming the other fields; ` ({name})` placeholders take `values`
    cel: str
    holds: Callable[[SpecT], bool]
    values: Callable[[SpecT], Mapping[str, object]] = _no_values

    def explain(self, spec: SpecT) -> str:
        """The message with the spec's values: what the models report."""
        return self.message.format_map(self.values(spec))

    @property
    def static_message(self) -> str:
        """The message without placeholders: what the API server reports."""
        return _PLACEHOLDER.sub("", self.message)

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(self.message) if name is not None)


def _spoken(names: tuple[str, ...], last: str) -> str:
    """`a, b and c`: a list of names inside a sentence."""
    return f"{', '.join(names[:-1])} {last} {names[-1]}"


def _cel_list(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{name}'" for name in names) + "]"


def _cel_map(entries: Iterable[tuple[str, int]]) -> str:
    return "{" + ", ".join(f"'{name}': {number}" for name, number in entries) + "}"


# The fewest reports a round may close with: cohort.minReports, or all of cohort.clientsPerRound when unset.
_MIN_REPORTS = "(has(self.cohort.minReports) ? self.cohort.minReports : self.cohort.clientsPerRound)"
_MIN_REPORTS_WORDS = "cohort.minReports, or cohort.clientsPerRound when unset"
_KRUM = f"self.aggregation.strategy in {_cel_list(KRUM_STRATEGIES)}"
_INDIVIDUAL = f"self.aggregation.strategy in {_cel_list(INDIVIDUAL_UPDATE_STRATEGIES)}"
_SECAGG_ON = "self.privacy.secureAggregation.enabled"
_DP = "self.privacy.differentialPrivacy"


def _krum_needs(spec: FederatedJobSpec) -> int:
    # Krum's score needs n - f - 2 > 0 neighbours among the n reports of a round.
    return 2 * spec.aggregation.byzantine_count + 3


#: In the order they are checked: the models report the first rule a spec breaks (the API server reports
#: every one). Ports and sizes first, then Byzantine robustness, then privacy.
CROSS_FIELD_RULES: tuple[Rule[FederatedJobSpec], ...] = (
    Rule(
        name="ports-differ",
        field="aggregator.httpPort",
        message="must differ from aggregator.port ({port})",
        cel="self.aggregator.httpPort != self.aggregator.port",
        holds=lambda s: s.aggregator.http_port != s.aggregator.port,
        values=lambda s: {"port": s.aggregator.port},
    ),
    Rule(
        name="min-reports-within-cohort",
        field="cohort.minReports",
        message="must be at most cohort.clientsPerRound ({clients})",
        cel="!has(self.cohort.minReports) || self.cohort.minReports <= self.cohort.clientsPerRound",
        holds=lambda s: s.cohort.min_reports is None or s.cohort.min_reports <= s.cohort.clients_per_round,
        values=lambda s: {"clients": s.cohort.clients_per_round},
    ),
    Rule(
        name="cohort-within-fleet",
        field="cohort.clientsPerRound",
        message="must be at most simulation.devices ({devices})",
        cel="self.cohort.clientsPerRound <= self.simulation.devices",
        holds=lambda s: s.cohort.clients_per_round <= s.simulation.devices,
        values=lambda s: {"devices": s.simulation.devices},
    ),
    Rule(
        name="federated-evaluation-within-fleet",
        field="evaluation.federatedClients",
        message="must be at most simulation.devices ({devices}) when evaluation.federatedEvery is above 0",
        cel="self.evaluation.federatedEvery == 0 || self.evaluation.federatedClients <= self.simulation.devices",
        holds=lambda s: s.evaluation.federated_every == 0 or s.evaluation.federated_clients <= s.simulation.devices,
        values=lambda s: {"devices": s.simulation.devices},
    ),
    Rule(
        # Before this rule, only the aggregator refused it, when it split off its test data at start-up.
        name="test-split-within-dataset",
        field="simulation.testSamples",
        message="must be smaller than the size of simulation.dataset ({examples}): devices train on the rest",
        cel=f"self.simulation.testSamples < {_cel_map(DATASET_SIZES.items())}[self.simulation.dataset]",
        holds=lambda s: s.simulation.test_samples < DATASET_SIZES[s.simulation.dataset],
        values=lambda s: {"examples": DATASET_SIZES[s.simulation.dataset]},
    ),
    Rule(
        name="krum-has-enough-reports",
        field="aggregation.byzantineCount",
        message="krum needs every round to have at least 2·byzantineCount+3 reports ({need}), but a round may "
        f"close with as few as {_MIN_REPORTS_WORDS} ({{reports}})",
        cel=f"!({_KRUM}) || {_MIN_REPORTS} >= 2 * self.aggregation.byzantineCount + 3",
        holds=lambda s: (
            s.aggregation.strategy not in KRUM_STRATEGIES or s.cohort.effective_min_reports >= _krum_needs(s)
        ),
        values=lambda s: {"need": _krum_needs(s), "reports": s.cohort.effective_min_reports},
    ),
    Rule(
        name="multi-krum-selects-from-reports",
        field="aggregation.multiKrumSelect",
        message=f"must be at most the fewest reports a round may close with: {_MIN_REPORTS_WORDS} ({{reports}})",
        cel=f"!({_KRUM}) || !has(self.aggregation.multiKrumSelect) "
        f"|| self.aggregation.multiKrumSelect <= {_MIN_REPORTS}",
        holds=lambda s: (
            s.aggregation.strategy not in KRUM_STRATEGIES
            or s.aggregation.multi_krum_select is None
            or s.aggregation.multi_krum_select <= s.cohort.effective_min_reports
        ),
        values=lambda s: {"reports": s.cohort.effective_min_reports},
    ),
    Rule(
        name="secure-aggregation-needs-a-sum-strategy",
        field="aggregation.strategy",
        message=f"{_spoken(INDIVIDUAL_UPDATE_STRATEGIES, 'and')} need every device's individual update, but secure "
        f"aggregation reveals only their sum; use {_spoken(SUM_STRATEGIES, 'or')}",
        cel=f"!{_SECAGG_ON} || !({_INDIVIDUAL})",
        holds=lambda s: (
            not s.privacy.secure_aggregation.enabled or s.aggregation.strategy not in INDIVIDUAL_UPDATE_STRATEGIES
        ),
    ),
    Rule(
        name="distributed-noise-needs-secure-aggregation",
        field="privacy.differentialPrivacy.mode",
        message="distributed noise only protects devices when privacy.secureAggregation.enabled is true",
        cel=f"{_DP}.mode != 'distributed' || {_SECAGG_ON}",
        holds=lambda s: s.privacy.differential_privacy.mode != "distributed" or s.privacy.secure_aggregation.enabled,
    ),
    Rule(
        name="differential-privacy-needs-a-sum-strategy",
        field="aggregation.strategy",
        message="differential privacy is calibrated for a clipped sum of updates; "
        f"{_spoken(INDIVIDUAL_UPDATE_STRATEGIES, 'and')} are not one; use {_spoken(SUM_STRATEGIES, 'or')}",
        cel=f"{_DP}.mode == 'off' || !({_INDIVIDUAL})",
        holds=lambda s: (
            s.privacy.differential_privacy.mode == "off" or s.aggregation.strategy not in INDIVIDUAL_UPDATE_STRATEGIES
        ),
    ),
    Rule(
        name="secure-aggregation-needs-two-reports",
        field="cohort.minReports",
        message="secure aggregation needs at least 2 reports per round: the sum of one update is that update",
        cel=f"!{_SECAGG_ON} || {_MIN_REPORTS} >= 2",
        holds=lambda s: not s.privacy.secure_aggregation.enabled or s.cohort.effective_min_reports >= 2,
    ),
    Rule(
        name="differential-privacy-needs-a-noise-level",
        field="privacy.differentialPrivacy.noiseMultiplier",
        message="set noiseMultiplier, or targetEpsilon to calibrate it from",
        cel=f"{_DP}.mode == 'off' || has({_DP}.noiseMultiplier) || has({_DP}.targetEpsilon)",
        holds=lambda s: (
            s.privacy.differential_privacy.mode == "off"
            or s.privacy.differential_privacy.noise_multiplier is not None
            or s.privacy.differential_privacy.target_epsilon is not None
        ),
    ),
    Rule(
        # Before this rule, only the aggregator refused it, at run time, when it planned the noise
        # (skellam_plan_from_spec in privacy/dp/distributed.py): the job was accepted, then its pod failed.
        name="distributed-noise-has-a-fixed-clip-norm",
        field="privacy.differentialPrivacy.adaptiveClipping",
        message="must be false when privacy.differentialPrivacy.mode is distributed: adaptive clipping would need "
        "the count of clipped updates summed under secure aggregation too, which fedfleet does not do yet",
        cel=f"{_DP}.mode != 'distributed' || !{_DP}.adaptiveClipping",
        holds=lambda s: (
            s.privacy.differential_privacy.mode != "distributed" or not s.privacy.differential_privacy.adaptive_clipping
        ),
    ),
)


# --- the job's name -----------------------------------------------------------------------------------------

#: What a Service name must be (RFC 1035 label, as Kubernetes checks it): the aggregator's Service is named
#: after the job. Stricter than a custom resource's own name, which may hold dots or start with a digit.
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: The longest suffix a child's name adds to the job's (`<name>-aggregator`: its Pod, Service, ServiceAccount,
#: Role, RoleBinding and ConfigMap; operator/naming.py, whose test checks every child name against this).
LONGEST_CHILD_SUFFIX = "-aggregator"
#: A DNS-1035 label has at most 63 characters; so has a label value (the children carry the job's name in one).
MAX_LABEL_LENGTH = 63
MAX_NAME_LENGTH = MAX_LABEL_LENGTH - len(LONGEST_CHILD_SUFFIX)

_NAME = "self.metadata.name"

#: In the order they are checked (the models report the first one a name breaks).
NAME_RULES: tuple[Rule[str], ...] = (
    Rule(
        name="name-is-a-dns-label",
        field="metadata.name",
        message="must consist of lowercase letters, digits and '-', start with a letter and end with a letter or "
        "digit (a DNS-1035 label: the job's Service is named after it)",
        cel=f"{_NAME}.matches('{DNS_1035_LABEL}')",
        holds=lambda name: re.fullmatch(DNS_1035_LABEL, name) is not None,
    ),
    Rule(
        name="name-leaves-room-for-children",
        field="metadata.name",
        message=f"must be at most {MAX_NAME_LENGTH} characters ({{length}}): the job's children are named "
        f"<name>{LONGEST_CHILD_SUFFIX}, and a Service name has at most {MAX_LABEL_LENGTH}",
        cel=f"{_NAME}.size() <= {MAX_NAME_LENGTH}",
        holds=lambda name: len(name) <= MAX_NAME_LENGTH,
        values=lambda name: {"length": f"{len(name)} given"},
    ),
)

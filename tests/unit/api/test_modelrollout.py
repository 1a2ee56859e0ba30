"""The ModelRollout spec: the examples load, defaults are what the docs say, and bad or hostile manifests are
refused with one line naming the field and the rule (the cross-field rules are in test_rollout_rules.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedfleet.api.manifest import ManifestError, load_rollout, parse_rollout
from fedfleet.api.modelrollout import (
    MAX_LABELS,
    MAX_STEPS,
    Baseline,
    ModelRollout,
)
from fedfleet.api.strict_yaml import MAX_EXPANDED_NODES

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
DIGEST = "sha256:" + "0123456789abcdef" * 4
HEAD = "apiVersion: fedfleet.io/v1alpha1\nkind: ModelRollout\nmetadata:\n  name: hostile\n"
METRIC = '{name: accuracy, successCondition: "result > 0.9", provider: {builtin: {metric: accuracy}}}'


def _manifest(spec: str) -> str:
    return HEAD + "spec:\n" + "".join(f"  {line}\n" for line in spec.strip().splitlines())


def _rollout(spec: str) -> ModelRollout:
    return parse_rollout(_manifest(spec), source="rollout.yaml")


def refused(spec: str) -> str:
    with pytest.raises(ManifestError) as caught:
        _rollout(spec)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("rollout.yaml: "), message
    return message.removeprefix("rollout.yaml: ")


MINIMAL = f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{setWeight: 100}}]"


# --- the examples and the defaults --------------------------------------------------------------------------


def test_the_local_example_is_the_mnist_job_in_four_gated_steps() -> None:
    rollout = load_rollout(EXAMPLES / "rollout.yaml")
    spec = rollout.spec
    assert spec.model.federated_job == "mnist-fedavg" and spec.model.key == "federatedJob/mnist-fedavg"
    # The FederatedJob it names is the quick-start job.
    assert "name: mnist-fedavg" in (EXAMPLES / "mnist-fedavg.yaml").read_text()
    weights = [step.set_weight for step in spec.steps if step.set_weight is not None]
    assert weights == [1, 5, 25, 100]
    accuracy = next(m for m in spec.analysis.metrics if m.name == "accuracy")
    assert accuracy.provider.builtin is not None and accuracy.provider.builtin.metric == "accuracy"
    assert accuracy.baseline == Baseline.STABLE and "baseline" in accuracy.success_condition
    # Every raise of the weight after the first is preceded by an analysis of the previous one.
    kinds = [step.kind for step in spec.steps]
    for index, step in enumerate(spec.steps):
        if step.set_weight is not None and index > 0:
            assert "analysis" in kinds[:index]
    assert all(m.provider.prometheus is None for m in spec.analysis.metrics)


def test_the_cluster_example_queries_the_gateway_metrics_in_prometheus() -> None:
    spec = load_rollout(EXAMPLES / "rollout-cluster.yaml").spec
    assert [s.set_weight for s in spec.steps if s.set_weight is not None] == [1, 5, 25, 100]
    queries = {m.name: m.provider.prometheus.query for m in spec.analysis.metrics if m.provider.prometheus}
    assert set(queries) == {m.name for m in spec.analysis.metrics}, "every metric is a Prometheus query"
    text = " ".join(queries.values())
    for metric in ("fedfleet_gateway_model_accuracy", "fedfleet_gateway_activation_failures_total",
                   "fedfleet_gateway_health_reports_total"):  # fmt: skip
        assert metric in text
    for query in queries.values():
        assert "{{version}}" in query and "{{fleet}}" in query  # measured per version, within the fleet
    assert spec.analysis.background == ("activation-failures",)


def test_defaults() -> None:
    spec = _rollout(MINIMAL).spec
    assert spec.fleet == "default" and spec.progress_deadline_seconds == 600 and not spec.control_cohort
    assert spec.prometheus is None and spec.analysis.metrics == () and spec.analysis.background == ()
    assert spec.selector.match_labels == {} and spec.selector.match_expressions == ()
    metric = _rollout(MINIMAL + f"\nanalysis: {{metrics: [{METRIC}]}}").spec.analysis.metrics[0]
    assert (metric.interval, metric.count, metric.failure_limit, metric.inconclusive_limit) == ("30s", 1, 0, 0)
    assert metric.consecutive_error_limit == 4 and metric.min_reporting_devices == 10
    assert metric.baseline == "stable" and metric.failure_condition == ""


def test_a_pause_without_duration_waits_for_promotion_and_steps_know_their_kind() -> None:
    steps = _rollout(f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{setWeight: 1}}, {{pause: {{}}}}, "
                     "{pause: {duration: 1h30m}}]").spec.steps  # fmt: skip
    assert [s.kind for s in steps] == ["setWeight", "pause", "pause"]
    assert steps[1].pause is not None and steps[1].pause.duration is None
    assert steps[2].pause is not None and steps[2].pause.duration == "1h30m"


def test_the_model_key_names_what_spec_model_names() -> None:
    assert _rollout(MINIMAL).spec.model.key == f"artifact/{DIGEST}"


# --- refusals that name the field ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("model: {artifact: 'sha256:abc'}\nsteps: [{setWeight: 1}]", "spec.model.artifact: string should match"),
        ("model: {federatedJob: Mnist_Job}\nsteps: [{setWeight: 1}]", "spec.model.federatedJob: string should match"),
        (MINIMAL + "\nfleet: Default", "spec.fleet: string should match"),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{setWeight: 101}}]",
         "spec.steps.0.setWeight: must be at most 100"),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{setWeight: -1}}]", "spec.steps.0.setWeight: must be at least 0"),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{setWeight: 5.5}}]", "spec.steps.0.setWeight: "),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{setWeight: '5'}}]", "spec.steps.0.setWeight: "),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{pause: {{duration: 8d}}}}]",
         "spec.steps.0.pause.duration: must be a duration like 500ms, 30s, 5m or 1h30m (got '8d')"),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{pause: {{duration: 169h}}}}]",
         "spec.steps.0.pause.duration: must be at most 168h (got '169h')"),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{pause: {{duration: 30}}}}]", "spec.steps.0.pause.duration: "),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{setweight: 1}}]",
         "spec.steps.0.setweight: unknown field (did you mean setWeight?)"),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [{{analysis: {{metrics: []}}}}]",
         "spec.steps.0.analysis.metrics: "),
        (MINIMAL + "\nprogressDeadlineSeconds: 0", "spec.progressDeadlineSeconds: must be at least 1"),
        (MINIMAL + "\nprometheus: {address: 'ftp://prometheus:9090'}", "spec.prometheus.address: string should match"),
        (MINIMAL + "\nselector: {matchlabels: {os: android}}",
         "spec.selector.matchlabels: unknown field (did you mean matchLabels?)"),
        (MINIMAL + "\nselector: {matchLabels: {'bad key': x}}",
         "spec.selector.matchLabels: key 'bad key' is not an attribute name"),
        (MINIMAL + "\nselector: {matchLabels: {os: 'no spaces'}}", "spec.selector.matchLabels.os: string should match"),
        (MINIMAL + "\nselector: {matchExpressions: [{key: os, operator: Like, values: [a]}]}",
         "spec.selector.matchExpressions.0.operator: must be one of In, NotIn, Exists, DoesNotExist"),
        (MINIMAL + "\nanalysis: {metrics: [{name: acc, successCondition: x, provider: {graphite: {}}}]}",
         "spec.analysis.metrics.0.provider.graphite: unknown field"),
        (MINIMAL + "\nanalysis: {metrics: [{name: acc, successCondition: x, provider: {builtin: {metric: f1}}}]}",
         "spec.analysis.metrics.0.provider.builtin.metric: must be one of accuracy, loss, latencyP99, "
         "activationFailureRate"),
        (MINIMAL + "\nanalysis: {metrics: [{name: acc, interval: 500ms, successCondition: x, provider: {}}]}",
         "spec.analysis.metrics.0.interval: must be at least 1s"),
        (MINIMAL + "\nanalysis: {metrics: [{name: acc, count: 0, successCondition: x, provider: {}}]}",
         "spec.analysis.metrics.0.count: must be at least 1"),
        (MINIMAL + "\nanalysis: {metrics: [{name: acc, minReportingDevices: 0, successCondition: x, provider: {}}]}",
         "spec.analysis.metrics.0.minReportingDevices: must be at least 1"),
        (MINIMAL + "\nanalysis: {metrics: [{name: acc, baseline: canary, successCondition: x, provider: {}}]}",
         "spec.analysis.metrics.0.baseline: must be one of stable, control, none"),
        (MINIMAL + "\nanalysis: {metrics: [{name: Accuracy, successCondition: x, provider: {}}]}",
         "spec.analysis.metrics.0.name: string should match"),
        ("steps: [{setWeight: 1}]", "spec.model: required field is missing"),
        (f"model: {{artifact: '{DIGEST}'}}", "spec.steps: required field is missing"),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: null", "spec.steps: "),
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: []", "spec.steps: a rollout needs at least one step"),
        ("model: {}\nsteps: [{setWeight: 1}]", "spec.model: set exactly one of federatedJob and artifact"),
    ],
)  # fmt: skip
def test_bad_fields_are_refused_naming_the_field_and_the_rule(spec: str, expected: str) -> None:
    assert refused(spec).startswith(expected)


def test_a_manifest_of_another_kind_is_named() -> None:
    text = "apiVersion: fedfleet.io/v1alpha1\nkind: FederatedJob\nmetadata: {name: j}\nspec: {rounds: 1}\n"
    with pytest.raises(ManifestError, match=r"kind: must be ModelRollout \(got 'FederatedJob'\)"):
        parse_rollout(text)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_rollout(tmp_path / "absent.yaml")


# --- hostile manifests: bounded sizes, fast refusals --------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (f"model: {{artifact: '{DIGEST}'}}\nsteps: [" + ", ".join(["{setWeight: 1}"] * (MAX_STEPS + 1)) + "]",
         f"spec.steps: tuple should have at most {MAX_STEPS} items"),
        (MINIMAL + "\nselector: {matchLabels: {" + ", ".join(f"k{i}: v" for i in range(MAX_LABELS + 1)) + "}}",
         f"spec.selector.matchLabels: dictionary should have at most {MAX_LABELS} items"),
        (MINIMAL + "\nselector: {matchLabels: {" + "k" * 64 + ": v}}",
         "spec.selector.matchLabels: key '" + "k" * 63 + "...' is not an attribute name"),
        (MINIMAL + "\nanalysis: {metrics: [{name: a, successCondition: '" + "x" * 1025 + "', provider: {}}]}",
         "spec.analysis.metrics.0.successCondition: string should have at most 1024 characters"),
        (MINIMAL + "\nanalysis: {metrics: [{name: a, successCondition: x, provider: {prometheus: {query: '"
         + "u" * 4097 + "'}}}]}",
         "spec.analysis.metrics.0.provider.prometheus.query: string should have at most 4096 characters"),
        (MINIMAL + "\nanalysis: {background: [" + ", ".join(["a"] * 17) + "]}",
         "spec.analysis.background: tuple should have at most 16 items"),
        (MINIMAL + "\nselector: {matchExpressions: [{key: os, operator: In, values: [" + ", ".join(["a"] * 65)
         + "]}]}", "spec.selector.matchExpressions.0.values: tuple should have at most 64 items"),
        (MINIMAL + "\nprogressDeadlineSeconds: " + "9" * 30, "spec.progressDeadlineSeconds: must be at most 604800"),
    ],
)  # fmt: skip
def test_oversized_input_is_refused_naming_the_bound(spec: str, expected: str) -> None:
    message = refused(spec)
    assert message.startswith(expected), message
    assert len(message) < 400, "the offending value is quoted shortened"


def test_an_alias_bomb_in_a_rollout_is_refused_fast() -> None:
    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    started = time.process_time()
    message = refused("\n".join(lines) + "\n" + MINIMAL)
    assert f"more than {MAX_EXPANDED_NODES} values" in message
    assert time.process_time() - started < 2.0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("{}[]&*!:-,'\"|>#\n %@`0123456789abcxyz.~<")), max_size=200))
def test_no_text_makes_the_loader_raise_anything_but_a_manifest_error(tail: str) -> None:
    try:
        parse_rollout(HEAD + "spec:\n  steps: [" + tail, source="rollout.yaml")
    except ManifestError as exc:
        assert "\n" not in str(exc)

"""Reading FederatedJob manifests: valid ones round-trip, bad ones give one line naming the field and rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedfleet.api.federatedjob import FederatedJob, Strategy
from fedfleet.api.manifest import ManifestError, load_job, parse_job

HEADER = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: mnist-demo
  namespace: fleet
"""


def _job(spec: str) -> str:
    return HEADER + "spec:\n" + "".join(f"  {line}\n" for line in spec.strip("\n").splitlines())


def _error(text: str) -> str:
    with pytest.raises(ManifestError) as info:
        parse_job(text, source="job.yaml")
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    exc = info.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__), "chained traceback"
    assert message.startswith("job.yaml: "), message
    return message.removeprefix("job.yaml: ")


# --- valid manifests ----------------------------------------------------------------------------------


def test_minimal_manifest_gets_every_default() -> None:
    job = parse_job(_job("rounds: 5"))
    assert job.metadata.name == "mnist-demo" and job.metadata.namespace == "fleet"
    spec = job.spec
    assert spec.rounds == 5 and spec.seed == 0
    assert spec.model.architecture == "2nn"
    assert (spec.training.local_epochs, spec.training.batch_size, spec.training.learning_rate) == (1, 10, 0.05)
    assert spec.cohort.clients_per_round == 10 and spec.cohort.min_reports is None
    assert spec.cohort.effective_min_reports == 10
    assert spec.aggregation.strategy == Strategy.FEDAVG
    assert spec.simulation.devices == 100 and spec.simulation.partition.scheme == "iid"


def test_camel_case_fields_are_read_into_the_models() -> None:
    text = _job(
        """
rounds: 20
seed: 7
training: {localEpochs: 5, batchSize: 0, learningRate: 0.1}
cohort: {clientsPerRound: 30, overSelection: 1.3, minReports: 25, roundDeadlineSeconds: 60}
aggregation: {strategy: multiKrum, byzantineCount: 5, multiKrumSelect: 10}
simulation:
  devices: 200
  partition: {scheme: dirichlet, alpha: 0.1}
  byzantine: {fraction: 0.05, attack: gaussianNoise, noiseStd: 3}
"""
    )
    spec = parse_job(text).spec
    assert (spec.training.local_epochs, spec.training.batch_size, spec.training.learning_rate) == (5, 0, 0.1)
    assert spec.cohort.invited == 39  # ceil(30 * 1.3)
    assert spec.cohort.effective_min_reports == 25
    assert spec.aggregation.strategy == Strategy.MULTI_KRUM and spec.aggregation.multi_krum_select == 10
    assert spec.simulation.partition.alpha == 0.1 and spec.simulation.partition.scheme == "dirichlet"
    assert spec.simulation.byzantine.attack == "gaussianNoise" and spec.simulation.byzantine.noise_std == 3.0


def test_a_parsed_job_dumps_to_a_manifest_that_parses_to_the_same_job() -> None:
    job = parse_job(_job("rounds: 12\naggregation: {strategy: fedprox}\ncohort: {minReports: 8}"))
    dumped = yaml.safe_dump(job.model_dump(by_alias=True, exclude_none=True, mode="json"))
    again = parse_job(dumped)
    assert again == job
    assert again.spec.proximal_mu == 0.01  # fedprox's default μ survives the trip


def test_other_documents_in_the_file_are_ignored() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: fleet}\n---\n" + _job("rounds: 2") + "---\n"
    assert parse_job(text).spec.rounds == 2


def test_load_job_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(_job("rounds: 4"), encoding="utf-8")
    assert load_job(path).spec.rounds == 4


# --- bad manifests: one line that names the field and the rule ------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("rounds: 5\ncohort:\n  clientz: 3", "spec.cohort.clientz: unknown field (did you mean clients"),
        ("rounds: -1", "spec.rounds: must be at least 1 (got -1)"),
        ("rounds: 100001", "spec.rounds: must be at most 100000 (got 100001)"),
        ("rounds: many", "spec.rounds: input should be a valid integer"),
        (
            "rounds: 5\nsimulation: {partition: {alpha: 0}}",
            "spec.simulation.partition.alpha: must be greater than 0 (got 0)",
        ),
        (
            "rounds: 5\naggregation: {strategy: fedmagic}",
            "spec.aggregation.strategy: must be one of fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox, "
            "median, trimmedMean, krum, multiKrum, normBounding (got 'fedmagic')",
        ),
        ("rounds: 5\nmodel: {architecture: resnet}", "spec.model.architecture: must be one of 2nn, cnn, logistic"),
        ("seed: 3", "spec.rounds: required field is missing"),
        ("rounds: 5\naggregation: {serverMomentum: 1}", "spec.aggregation.serverMomentum: must be less than 1 (got 1)"),
    ],
    ids=[
        "unknown-field",
        "negative-rounds",
        "too-many-rounds",
        "rounds-not-int",
        "alpha-zero",
        "no-such-strategy",
        "no-such-architecture",
        "missing-rounds",
        "exclusive-max",
    ],
)
def test_field_rules(spec: str, expected: str) -> None:
    assert _error(_job(spec)).startswith(expected)


def test_snake_case_is_not_the_wire_format() -> None:
    # The API server would prune this key, so the local runtime must not quietly accept it either.
    message = _error(_job("rounds: 5\ncohort: {clients_per_round: 4}"))
    assert message == "spec.cohort.clients_per_round: unknown field (did you mean clientsPerRound?)"


def test_clients_per_round_above_the_fleet() -> None:
    message = _error(_job("rounds: 5\ncohort: {clientsPerRound: 50}\nsimulation: {devices: 20}"))
    assert message == "spec.cohort.clientsPerRound: must be at most simulation.devices (20) (got 50)"


def test_min_reports_above_clients_per_round() -> None:
    message = _error(_job("rounds: 5\ncohort: {clientsPerRound: 5, minReports: 8}"))
    assert message == "spec.cohort.minReports: must be at most cohort.clientsPerRound (5) (got 8)"


def test_krum_with_too_few_reports() -> None:
    message = _error(_job("rounds: 5\naggregation: {strategy: krum, byzantineCount: 3}\ncohort: {clientsPerRound: 8}"))
    assert message == (
        "spec.aggregation.byzantineCount: krum needs every round to have at least 2·byzantineCount+3 reports (9), "
        "but a round may close with as few as cohort.minReports, or cohort.clientsPerRound when unset (8) (got 3)"
    )


def test_krum_default_byzantine_count_still_needs_three_reports() -> None:
    # byzantineCount is not in the manifest, so no "(got …)" can be quoted: the rule alone is given.
    message = _error(_job("rounds: 5\naggregation: {strategy: krum}\ncohort: {clientsPerRound: 2}"))
    assert message.startswith("spec.aggregation.byzantineCount: krum needs") and "(got" not in message


def test_multi_krum_selects_more_than_a_round_may_report() -> None:
    message = _error(
        _job(
            "rounds: 5\naggregation: {strategy: multiKrum, multiKrumSelect: 9}\n"
            "cohort: {clientsPerRound: 8, minReports: 6}"
        )
    )
    assert message == (
        "spec.aggregation.multiKrumSelect: must be at most the fewest reports a round may close with: "
        "cohort.minReports, or cohort.clientsPerRound when unset (6) (got 9)"
    )


def test_federated_evaluation_asks_more_devices_than_the_fleet_has() -> None:
    message = _error(
        _job("rounds: 5\nevaluation: {federatedEvery: 2, federatedClients: 30}\nsimulation: {devices: 20}")
    )
    assert message == (
        "spec.evaluation.federatedClients: must be at most simulation.devices (20) when evaluation.federatedEvery "
        "is above 0 (got 30)"
    )


def test_federated_clients_above_the_fleet_are_fine_without_federated_evaluation() -> None:
    job = parse_job(_job("rounds: 5\nevaluation: {federatedClients: 30}\nsimulation: {devices: 20}"))
    assert job.spec.evaluation.federated_every == 0


def test_metrics_port_on_the_grpc_port() -> None:
    message = _error(_job("rounds: 5\naggregator: {port: 7000, httpPort: 7000}"))
    assert message == "spec.aggregator.httpPort: must differ from aggregator.port (7000) (got 7000)"


def test_wrong_api_version() -> None:
    message = _error(_job("rounds: 5").replace("fedfleet.io/v1alpha1", "fedfleet.io/v1"))
    assert message == "apiVersion: must be fedfleet.io/v1alpha1 (got 'fedfleet.io/v1')"


def test_wrong_kind() -> None:
    message = _error(_job("rounds: 5").replace("kind: FederatedJob", "kind: FederatedJobs"))
    assert message == "kind: must be FederatedJob (got 'FederatedJobs')"


def test_two_jobs_in_one_file() -> None:
    text = _job("rounds: 5") + "---\n" + _job("rounds: 6")
    assert _error(text) == "expected exactly one document of kind FederatedJob, found 2"


def test_empty_file() -> None:
    assert _error("# nothing here\n") == "expected one document of kind FederatedJob, found none"


def test_yaml_syntax_error_gives_the_line() -> None:
    text = _job("rounds: 5\ncohort:\n  clientsPerRound: 4\n   minReports: 2")
    bad_line = text.splitlines().index("     minReports: 2") + 1
    message = _error(text)
    assert message.startswith(f"YAML syntax error at line {bad_line}, column")
    assert "mapping values are not allowed here" in message


def test_bad_metadata_name() -> None:
    message = _error(_job("rounds: 5").replace("name: mnist-demo", "name: Mnist_Demo"))
    assert message.startswith("metadata.name: string should match pattern") and message.endswith("(got 'Mnist_Demo')")


def test_several_problems_report_the_first_and_count_the_rest() -> None:
    message = _error(_job("rounds: 0\nseed: -1\ncohort: {clientz: 1}"))
    assert message == "spec.rounds: must be at least 1 (got 0) (and 2 more problems)"


def test_a_huge_value_is_shortened() -> None:
    message = _error(_job("rounds: " + "x" * 500))
    assert message.endswith("...)") and len(message) < 200


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ManifestError, match=r"nope\.yaml: cannot read: No such file or directory$"):
        load_job(missing)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(b"apiVersion: \xff\xfe\n")
    with pytest.raises(ManifestError, match=r"job\.yaml: not UTF-8 text"):
        load_job(path)


def test_job_model_is_what_parse_returns() -> None:
    assert isinstance(parse_job(_job("rounds: 1")), FederatedJob)


# --- privacy combinations that cannot work ------------------------------------------------------------


def test_secure_aggregation_refuses_rules_that_need_individual_updates() -> None:
    message = _error(_job("rounds: 3\naggregation: {strategy: median}\nprivacy: {secureAggregation: {enabled: true}}"))
    assert message.startswith(
        "spec.aggregation.strategy: median, trimmedMean, krum and multiKrum need every device's individual update"
    )
    assert "; use fedavg, fedavgm," in message and message.endswith("(got 'median')")


def test_distributed_noise_needs_secure_aggregation() -> None:
    message = _error(_job("rounds: 3\nprivacy: {differentialPrivacy: {mode: distributed, noiseMultiplier: 1.0}}"))
    assert message.startswith("spec.privacy.differentialPrivacy.mode: distributed noise only protects devices")


def test_dp_needs_a_noise_multiplier_or_a_target_epsilon() -> None:
    message = _error(_job("rounds: 3\nprivacy: {differentialPrivacy: {mode: central}}"))
    assert message.startswith("spec.privacy.differentialPrivacy.noiseMultiplier: set noiseMultiplier")


def test_distributed_noise_refuses_adaptive_clipping() -> None:
    # Refused before any pod starts: the aggregator could only refuse it when it plans the noise.
    message = _error(
        _job(
            "rounds: 3\nprivacy:\n  secureAggregation: {enabled: true}\n"
            "  differentialPrivacy: {mode: distributed, noiseMultiplier: 1.0, adaptiveClipping: true}"
        )
    )
    assert message.startswith(
        "spec.privacy.differentialPrivacy.adaptiveClipping: must be false when privacy.differentialPrivacy.mode is "
        "distributed: "
    )
    assert message.endswith("(got True)")


def test_central_dp_with_adaptive_clipping_is_accepted() -> None:
    job = parse_job(
        _job("rounds: 3\nprivacy: {differentialPrivacy: {mode: central, noiseMultiplier: 1.0, adaptiveClipping: true}}")
    )
    assert job.spec.privacy.differential_privacy.adaptive_clipping


def test_dp_with_secure_aggregation_and_fedadam_is_accepted() -> None:
    job = parse_job(
        _job(
            "rounds: 3\naggregation: {strategy: fedadam}\nprivacy:\n"
            "  secureAggregation: {enabled: true}\n"
            "  differentialPrivacy: {mode: distributed, targetEpsilon: 4.0}"
        )
    )
    assert job.spec.privacy.secure_aggregation.enabled
    assert job.spec.privacy.differential_privacy.target_epsilon == 4.0


EXAMPLE_JOBS = sorted(
    p
    for p in (Path(__file__).resolve().parents[3] / "examples").glob("*.yaml")
    if "kind: FederatedJob" in p.read_text()
)


@pytest.mark.parametrize("example", EXAMPLE_JOBS, ids=[p.name for p in EXAMPLE_JOBS])
def test_every_example_job_manifest_is_valid(example: Path) -> None:
    job = parse_job(example.read_text())
    assert job.spec.rounds >= 1 and job.metadata.name

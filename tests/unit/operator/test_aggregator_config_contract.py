"""The operator → aggregator configuration: what the operator writes is what the aggregator's loader reads."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_jobs import SPEC, job_body

from fedfleet.api import crd
from fedfleet.api.aggregator_config import (
    CLUSTER_ONLY_FIELDS,
    CLUSTER_ONLY_KEYS,
    AggregatorConfig,
    ConfigError,
    Endpoint,
    EvaluationData,
    EvaluationDataset,
    dump_config,
    load_config,
    parse_config,
)
from fedfleet.api.federatedjob import FederatedJobSpec, SimulationSpec
from fedfleet.api.manifest import parse_job
from fedfleet.data.datasets import DATASET_NAMES
from fedfleet.engine.server import spec_digest
from fedfleet.operator import naming
from fedfleet.operator.resources import aggregator_config


def _built(spec: dict[str, Any] | None = None) -> AggregatorConfig:
    body = job_body(spec)
    return aggregator_config(body, FederatedJobSpec.model_validate(body["spec"], by_alias=True, by_name=False))


def test_the_operators_config_loads_with_the_aggregators_loader_unchanged(tmp_path: Path) -> None:
    built = _built()
    path = tmp_path / naming.CONFIG_FILE
    path.write_text(dump_config(built))
    loaded, job = load_config(path)
    assert loaded == built  # every path is absolute in the pod: nothing to resolve, nothing lost
    assert (job.metadata.name, job.metadata.namespace) == ("digits", "team-a")
    assert job.spec == FederatedJobSpec.model_validate(SPEC, by_alias=True, by_name=False)


def test_the_fleet_and_the_evaluation_data_come_from_the_simulated_fleet_in_the_spec() -> None:
    built = _built()
    assert built.fleet_size == SPEC["simulation"]["devices"] == 4
    assert built.evaluation == EvaluationData(dataset="digits", test_samples=200)
    # No held-out examples: the dataset still says what the model takes; the server evaluates on nothing.
    none_held_out = _built({**SPEC, "simulation": {**SPEC["simulation"], "testSamples": 0}})
    assert none_held_out.evaluation == EvaluationData(dataset="digits", test_samples=0)
    assert parse_config(yaml.safe_load(dump_config(none_held_out)), "t").evaluation == none_held_out.evaluation


def test_a_config_silent_about_the_fleet_means_the_jobs_simulated_fleet() -> None:
    job = parse_job(
        yaml.safe_dump(
            {"apiVersion": "fedfleet.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": "x"}, "spec": SPEC}
        )
    )
    silent = parse_config({"job": "job.yaml"}, "t")
    assert silent.evaluation_for(job.spec) == EvaluationData(dataset="digits", test_samples=200)
    assert silent.fleet_size_for(job.spec) == 4
    told = parse_config(
        {"job": "job.yaml", "fleetSize": 9, "evaluation": {"dataset": "mnist5k", "testSamples": 5}}, "t"
    )
    assert told.evaluation_for(job.spec) == EvaluationData(dataset="mnist5k", test_samples=5)
    assert told.fleet_size_for(job.spec) == 9


def test_cluster_only_fields_never_reach_the_aggregator() -> None:
    base = _built()
    operational = _built({**SPEC, "suspend": True, "activeDeadlineSeconds": 60, "aggregator": {"image": "a:2"}})
    assert operational.job == base.job  # suspending is not a different job to the aggregator or its checkpoint
    assert isinstance(base.job, dict) and not CLUSTER_ONLY_KEYS & set(base.job["spec"])
    different = _built({**SPEC, "rounds": 4})
    assert different.job != base.job


def test_cluster_only_fields_are_the_specs_mutable_fields_and_the_digest_ignores_them() -> None:
    spec_fields = FederatedJobSpec.model_fields
    assert set(spec_fields) >= CLUSTER_ONLY_FIELDS
    keys = {info.alias or name for name, info in spec_fields.items()}
    # The CRD makes every other field immutable; these three may change while the job runs.
    assert set(crd.IMMUTABLE_FIELDS) == keys - CLUSTER_ONLY_KEYS
    spec = FederatedJobSpec.model_validate(SPEC, by_alias=True, by_name=False)
    suspended = spec.model_copy(update={"suspend": True, "active_deadline_seconds": 60})
    assert spec_digest(suspended) == spec_digest(spec)
    assert spec_digest(spec.model_copy(update={"rounds": 9})) != spec_digest(spec)


def test_evaluation_datasets_are_the_ones_that_ship() -> None:
    assert set(typing.get_args(EvaluationDataset)) == set(DATASET_NAMES)
    assert set(typing.get_args(SimulationSpec.model_fields["dataset"].annotation)) == set(DATASET_NAMES)


def test_dump_and_parse_round_trip_including_an_explicit_none() -> None:
    config = AggregatorConfig(job="job.yaml", http=None, listen=Endpoint(host="::1", port=0), fleet_size=10)
    assert parse_config(yaml.safe_load(dump_config(config)), "t") == config
    assert "timeScale" not in dump_config(config)  # unset fields keep the reader's defaults


def test_configs_written_before_fleet_size_and_evaluation_still_load() -> None:
    old = {"job": "job.yaml", "listen": {"host": "0.0.0.0", "port": 50051}, "stateDir": "/state"}
    config = parse_config(old, "old")
    assert config.fleet_size is None and config.evaluation is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fleetSize": 0}, "fleetSize: must be at least 1 (got 0)"),
        ({"fleetSize": 10**9}, "fleetSize: must be at most 100000000"),
        ({"evaluation": {"dataset": "cifar10", "testSamples": 10}}, "evaluation.dataset: "),
        ({"evaluation": {"dataset": "digits", "testSamples": -1}}, "evaluation.testSamples: must be at least 0"),
        ({"evaluation": {"dataset": "digits"}}, "evaluation.testSamples: required field is missing"),
        (
            {"evaluation": {"dataset": "digits", "testSamples": 1797}},
            "evaluation.testSamples: must be smaller than the 1797 examples of digits (got 1797)",
        ),
        (
            {"evaluation": {"dataset": "digits", "testSamples": 5, "test_samples": 5}},
            "evaluation.test_samples: unknown",
        ),
    ],
)
def test_bad_new_fields_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"job": "job.yaml", **fields}, "aggregator.yaml")
    assert str(err.value).startswith("aggregator.yaml: ") and message in str(err.value)


def test_a_bad_listen_host_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^listen\.host: "):
        _built().with_listen_host("")

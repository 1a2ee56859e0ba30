"""The aggregator's configuration file: which job, where to listen, TLS and token key files, state dir.

    job: mnist-fedavg.yaml          # a FederatedJob manifest (relative to this file) or one inline
    listen: {host: 127.0.0.1, port: 50051}
    http: {host: 127.0.0.1, port: 9090}
    tls: {cert: tls/server.crt, key: tls/server.key, ca: tls/ca.crt, generate: true}
    auth: {tokenKey: token.key, generate: true}
    stateDir: state
    ledgerPath: null                 # privacy ledger for central DP jobs; default: <stateDir>/privacy-ledger.db
    maxUpdateBytes: null             # default: the model's size in float32

Relative paths are resolved against the directory of the configuration file. Errors name the field and the
rule in one line, as for job manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from fedfleet.api.federatedjob import FederatedJob
from fedfleet.api.manifest import ManifestError, describe_validation_error, job_from_object, load_job


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


class EvaluationSection(_Section):
    dataset: Literal["mnist5k", "digits"] = Field(..., description="the data the model takes; held-out split")
    test_samples: int = Field(..., ge=0, le=100000, description="examples held out for server-side evaluation")


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
    linger_seconds: float = Field(5.0, ge=0, le=3600, description="keep telling devices DONE after the job ends")
    fleet_size: int | None = Field(None, ge=1, le=100_000_000, description="devices the job's fleet is planned to have")
    evaluation: EvaluationSection | None = Field(None, description="the model's data and the server's held-out split")


def load_config(path: Path) -> tuple[AggregatorConfig, FederatedJob]:
    """The configuration, with relative paths made absolute, and the job it runs."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    try:
        config = AggregatorConfig.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None
    config = resolve_paths(config, path.parent)
    return config, load_config_job(config, path.parent, source=str(path))


def resolve_paths(config: AggregatorConfig, base: Path) -> AggregatorConfig:
    def at(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    tls = config.tls.model_copy(
        update={"cert": at(config.tls.cert), "key": at(config.tls.key), "ca": at(config.tls.ca)}
    )
    auth = config.auth.model_copy(update={"token_key": at(config.auth.token_key)})
    ledger = at(config.ledger_path) if config.ledger_path is not None else None
    return config.model_copy(
        update={"tls": tls, "auth": auth, "state_dir": at(config.state_dir), "ledger_path": ledger}
    )


def load_config_job(config: AggregatorConfig, base: Path, source: str) -> FederatedJob:
    try:
        if isinstance(config.job, str):
            job_path = Path(config.job)
            return load_job(job_path if job_path.is_absolute() else base / job_path)
        return job_from_object(config.job, f"{source}: job")
    except ManifestError as exc:
        raise ConfigError(str(exc)) from None

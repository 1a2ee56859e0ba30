"""The gateway's configuration (`fedfleet gateway --config gateway.yaml`):

    listen: {host: 0.0.0.0, port: 50052}        # gRPC: fedfleet.v1.Fleet and FleetAdmin, health, reflection
    http: {host: 0.0.0.0, port: 9091}           # /metrics, /healthz, /readyz; null: none
    tls: {cert: tls/server.crt, key: tls/server.key, ca: tls/ca.crt, generate: false, hosts: []}
    auth: {tokenKey: token.key, adminToken: admin.token, publishToken: publish.token, generate: false}
    artifactDir: artifacts                      # the content-addressed model store (the gateway's volume)
    stateDir: state                             # each fleet's current view
    fleets: [default]
    checkInIntervalSeconds: 60
    watchKeepaliveSeconds: 30
    limits: {maxAttributes: 32, maxWatchStreams: 20000, ...}
    viewSource: {kind: configmap, namespace: fedfleet-system, intervalSeconds: 1}   # optional, see below

`auth.adminToken` is the FleetAdmin secret for every call; `auth.publishToken` (optional: a config without
it has only the admin secret) is accepted for PublishModel alone. Aggregators hold the publish token: they run
next to users' training pods, and a token that leaks from there can add an artifact to the store but never
change which model a fleet runs (PutFleetView).

`viewSource` says where each fleet's view comes from besides the FleetAdmin API: `configmap` reads the
ConfigMaps `fedfleet-fleet-<fleet>` the operator writes (gateway/view_source.py), through the API server as
the pod's ServiceAccount; `namespace` defaults to the pod's own. Absent: only PutFleetView feeds views (the
embedded runtime, a gateway outside a cluster).

Relative paths are resolved against the directory of the file. Errors name the field and the rule in one line,
as for job manifests; the file is read as the API server reads manifests (api/strict_yaml.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from fedfleet.api.aggregator_config import ConfigError, Endpoint, TlsSection, parse_settings, read_settings
from fedfleet.api.federatedjob import SpecError

from .core import GatewaySettings
from .inputs import AttributeLimits

__all__ = ["ConfigError", "GatewayConfig", "load_gateway_config", "parse_gateway_config"]

#: A fleet's name: a DNS label, as Kubernetes names the resources that refer to it.
FLEET_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MAX_FLEETS = 64
FleetName = Annotated[str, Field(min_length=1, max_length=63, pattern=FLEET_PATTERN)]


class _Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class GatewayAuth(_Section):
    token_key: Path = Field(Path("token.key"), description="hex file: the key of every served fleet's device tokens")
    admin_token: Path = Field(
        Path("admin.token"), description="hex file: the FleetAdmin bearer secret (`fedfleet token keygen`)"
    )
    publish_token: Path | None = Field(
        None, description="hex file: a bearer secret for PublishModel only (aggregators); none: no such secret"
    )
    generate: bool = Field(False, description="create the missing key files")

    @model_validator(mode="after")
    def _publish_token_is_its_own_file(self) -> GatewayAuth:
        # One file for both would make the publish token an admin token: the least privilege it exists for
        # would be gone. (Equal contents in two files are refused when the gateway reads them.)
        if self.publish_token is not None and self.publish_token == self.admin_token:
            raise SpecError("publishToken", "must be another file than adminToken (the two secrets must differ)")
        return self


#: The in-process defaults (fedfleet.gateway.core): a file that leaves a limit out gets the same.
_DEFAULT = GatewaySettings()


class GatewayLimits(_Section):
    max_attributes: int = Field(_DEFAULT.attributes.max_attributes, ge=1, le=256, description="per request")
    max_attribute_key_chars: int = Field(_DEFAULT.attributes.max_key_chars, ge=1, le=253)
    max_attribute_value_chars: int = Field(_DEFAULT.attributes.max_value_chars, ge=1, le=4096)
    max_artifact_bytes: int = Field(
        _DEFAULT.max_artifact_bytes, ge=1024, le=4 << 30, description="largest model artifact"
    )
    max_view_bytes: int = Field(_DEFAULT.max_view_bytes, ge=1024, le=16 << 20, description="largest fleet view JSON")
    max_releases: int = Field(_DEFAULT.max_releases, ge=1, le=1024, description="signed releases per PutFleetView")
    download_chunk_bytes: int = Field(
        _DEFAULT.download_chunk_bytes, ge=4096, le=256 << 10, description="data per download message"
    )
    max_watch_streams: int = Field(
        _DEFAULT.max_watch_streams, ge=1, le=1_000_000, description="open WatchAssignment streams in total"
    )
    max_watch_streams_per_device: int = Field(_DEFAULT.max_watch_streams_per_device, ge=1, le=16)
    max_tracked_devices: int = Field(
        _DEFAULT.max_tracked_devices,
        ge=1,
        le=10_000_000,
        description="devices remembered for the device and reporting gauges",
    )
    health_report_min_interval_seconds: float = Field(
        _DEFAULT.health_report_min_interval_seconds,
        ge=0,
        le=86400,
        description="least time between a device's accepted reports on one version",
    )
    max_concurrent_publishes: int = Field(_DEFAULT.max_concurrent_publishes, ge=1, le=16)


class ViewSource(_Section):
    kind: Literal["configmap"] = Field(..., description="configmap: the operator's fedfleet-fleet-<fleet> ConfigMaps")
    namespace: str | None = Field(
        None, min_length=1, max_length=63, pattern=FLEET_PATTERN, description="default: the pod's namespace"
    )
    interval_seconds: float = Field(1.0, ge=0.1, le=300, description="seconds between polls")


class GatewayConfig(_Section):
    listen: Endpoint = Field(default_factory=lambda: Endpoint(port=50052))
    http: Endpoint | None = Field(default_factory=lambda: Endpoint(port=9091))
    tls: TlsSection = Field(default_factory=TlsSection)
    auth: GatewayAuth = Field(default_factory=GatewayAuth)
    artifact_dir: Path = Field(Path("artifacts"), description="the content-addressed artifact store")
    state_dir: Path = Field(Path("state"), description="each fleet's current view")
    fleets: list[FleetName] = Field(..., min_length=1, max_length=MAX_FLEETS, description="the fleets served")
    check_in_interval_seconds: float = Field(
        _DEFAULT.check_in_interval_seconds, ge=1, le=86400, description="how often devices check in"
    )
    watch_keepalive_seconds: float = Field(
        _DEFAULT.keepalive_seconds, ge=0.05, le=3600, description="longest silence on a watch"
    )
    limits: GatewayLimits = Field(default_factory=GatewayLimits)
    view_source: ViewSource | None = Field(None, description="where fleet views come from besides the admin API")

    @field_validator("fleets")
    @classmethod
    def _fleets_once(cls, fleets: list[str]) -> list[str]:
        if len(set(fleets)) != len(fleets):
            raise ValueError("each fleet may be named once")
        return fleets

    def settings(self) -> GatewaySettings:
        limits = self.limits
        return GatewaySettings(
            check_in_interval_seconds=self.check_in_interval_seconds,
            keepalive_seconds=self.watch_keepalive_seconds,
            attributes=AttributeLimits(
                limits.max_attributes, limits.max_attribute_key_chars, limits.max_attribute_value_chars
            ),
            max_artifact_bytes=limits.max_artifact_bytes,
            max_view_bytes=limits.max_view_bytes,
            max_releases=limits.max_releases,
            download_chunk_bytes=limits.download_chunk_bytes,
            max_watch_streams=limits.max_watch_streams,
            max_watch_streams_per_device=limits.max_watch_streams_per_device,
            max_tracked_devices=limits.max_tracked_devices,
            health_report_min_interval_seconds=limits.health_report_min_interval_seconds,
            max_concurrent_publishes=limits.max_concurrent_publishes,
        )

    def map_paths(self, at: Callable[[Path], Path]) -> GatewayConfig:
        """Every file and directory path passed through `at`: the one list of which fields are paths."""
        tls = self.tls.model_copy(update={"cert": at(self.tls.cert), "key": at(self.tls.key), "ca": at(self.tls.ca)})
        keys = {"token_key": at(self.auth.token_key), "admin_token": at(self.auth.admin_token)}
        if self.auth.publish_token is not None:  # left unset otherwise, so a dump still leaves it out
            keys["publish_token"] = at(self.auth.publish_token)
        auth = self.auth.model_copy(update=keys)
        update: dict[str, Any] = {
            "tls": tls,
            "auth": auth,
            "artifact_dir": at(self.artifact_dir),
            "state_dir": at(self.state_dir),
        }
        return self.model_copy(update=update)


def parse_gateway_config(data: object, source: str) -> GatewayConfig:
    return parse_settings(GatewayConfig, data, source)


def load_gateway_config(path: Path) -> GatewayConfig:
    """The configuration with relative paths resolved against the file's directory; ConfigError names the field."""
    config = read_settings(GatewayConfig, path)
    base = path.parent
    return config.map_paths(lambda p: p if p.is_absolute() else (base / p).resolve())

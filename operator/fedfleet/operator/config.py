"""Operator settings: images, ports, storage, timing and the fleet gateway, from the command line
(`python -m fedfleet.operator`) or the environment (`kopf run -m fedfleet.operator.handlers`, read by its
startup handler).

Either way the handlers get them from kopf's operator memo (see fedfleet.operator.handlers)."""

from __future__ import annotations

import hmac
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from fedfleet import __version__
from fedfleet.api.aggregator_config import GatewaySection
from fedfleet.api.manifest import describe_validation_error
from fedfleet.api.pod_environment import under_root
from fedfleet.security.tokens import read_key

StateStorage = Literal["pvc", "emptyDir"]
EndpointMode = Literal["pod", "service"]

ENV_PREFIX = "FEDFLEET_OPERATOR_"
#: Longer than any real address; bounds what a mistyped value can make the operator carry around.
MAX_ADDRESS_LENGTH = 2048


#: How the gateway settings are named where they came from (flags or environment variables): address, CA,
#: admin token, publish token.
GatewayNames = tuple[str, str, str, str]


@dataclass(frozen=True)
class GatewayLink:
    """How aggregators reach the fleet gateway to publish their final models: its address, and the CA and
    publish token the operator copies into each job's namespace (a pod mounts only Secrets of its own). The
    publish token makes PublishModel and no other call: aggregators run next to users' training pods, so what
    they hold must not be able to change which model a fleet runs. The admin token the operator is given as
    well is never copied anywhere.

    The files are the gateway's Secrets mounted into the operator's pod (the chart does it); their content is
    read once, when the settings are, so reconciliation stays a pure function of the settings."""

    address: str  # host:port of the gateway's gRPC port
    ca_file: Path
    admin_token_file: Path
    publish_token_file: Path
    ca_pem: bytes = field(repr=False)
    admin_token: str = field(repr=False)  # hex, as the gateway compares it
    publish_token: str = field(repr=False)  # hex; the one copied into jobs

    @classmethod
    def load(
        cls, address: str, ca_file: Path, admin_token_file: Path, publish_token_file: Path, names: GatewayNames
    ) -> GatewayLink:
        """Read and check the files; ValueError naming the setting (`names`: address, CA, admin and publish
        token)."""
        try:
            GatewaySection(address=address, ca_file=ca_file, publish_token_file=publish_token_file)
        except ValidationError as exc:
            raise ValueError(f"{names[0]}: {describe_validation_error(exc).removeprefix('address: ')}") from None
        try:
            ca_pem = under_root(ca_file).read_bytes()  # mounted: under the pod's root on the local node agent
        except OSError as exc:
            raise ValueError(f"{names[1]}: cannot read {ca_file}: {exc.strerror or exc}") from None
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise ValueError(f"{names[1]}: {ca_file} is not a PEM certificate")
        admin = _hex_key(admin_token_file, names[2])
        publish = _hex_key(publish_token_file, names[3])
        if hmac.compare_digest(admin, publish):
            # Every job would be given the admin secret: the very thing the publish token is there to prevent.
            raise ValueError(f"{names[3]}: {publish_token_file} holds the admin token; it must hold the publish token")
        return cls(
            address=address,
            ca_file=ca_file,
            admin_token_file=admin_token_file,
            publish_token_file=publish_token_file,
            ca_pem=ca_pem,
            admin_token=admin,
            publish_token=publish,
        )


def _hex_key(path: Path, name: str) -> str:
    try:
        return read_key(under_root(path)).hex()
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class OperatorConfig:
    #: Runs the aggregator (`fedfleet aggregator`); a job's spec.aggregator.image overrides it.
    aggregator_image: str = f"fedfleet/aggregator:{__version__}"
    #: Runs the aggregator pod's init step (`python -m fedfleet.operator.certinit`): the operator's own image,
    #: which has `cryptography` but no torch.
    operator_image: str = f"fedfleet/operator:{__version__}"
    #: pvc: a PersistentVolumeClaim per job holds the checkpoint, so a recreated aggregator pod resumes.
    #: emptyDir: no storage needed, but a recreated pod starts the job again (only a restarted container resumes).
    state_storage: StateStorage = "pvc"
    state_size: str = "1Gi"
    storage_class: str | None = None
    #: pod: devices are told <pod IP>:<port> (no Service routing needed, as on the local dev cluster);
    #: service: <service>.<namespace>.svc:<port>, for devices inside the cluster.
    endpoint_mode: EndpointMode = "pod"
    #: Seconds between periodic reconciliations of each job (deadlines, progress, missing children).
    resync_seconds: float = 3.0
    #: A container restarting this often without becoming ready makes the job Stalled.
    stalled_restarts: int = 3
    namespaces: tuple[str, ...] = field(default_factory=tuple)  # empty: all namespaces
    #: Outside a cluster only: never taken from $KUBECONFIG or ~/.kube/config implicitly.
    kubeconfig: Path | None = None
    #: The Prometheus HTTP API (base URL) that rollout analysis queries when a ModelRollout names none.
    prometheus_address: str | None = None
    #: Where the fleet gateway runs: each fleet's view (ConfigMap) and signing key (Secret) live there.
    fleet_namespace: str = "fedfleet-system"
    #: The fleet gateway's HTTP port (base URL), asked about artifacts a ModelRollout names by digest.
    gateway_http_address: str | None = None
    #: Seconds between reconciliations of each ModelRollout (analysis intervals are measured on this tick).
    rollout_seconds: float = 2.0
    #: Where aggregators publish their final models; None: they do not publish.
    gateway: GatewayLink | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if environ is None else environ
        base = cls()

        def get(name: str, default: str) -> str:
            return env.get(ENV_PREFIX + name, default)

        storage = get("STATE_STORAGE", base.state_storage)
        if storage not in ("pvc", "emptyDir"):
            raise ValueError(f"{ENV_PREFIX}STATE_STORAGE: must be pvc or emptyDir, got {storage!r}")
        mode = get("ENDPOINT_MODE", base.endpoint_mode)
        if mode not in ("pod", "service"):
            raise ValueError(f"{ENV_PREFIX}ENDPOINT_MODE: must be pod or service, got {mode!r}")
        namespaces = tuple(n for n in get("NAMESPACES", "").split(",") if n.strip())
        address = get("PROMETHEUS_ADDRESS", "")
        return cls(
            aggregator_image=get("AGGREGATOR_IMAGE", base.aggregator_image),
            operator_image=get("IMAGE", base.operator_image),
            state_storage=storage,  # type: ignore[arg-type]
            state_size=get("STATE_SIZE", base.state_size),
            storage_class=get("STORAGE_CLASS", "") or None,
            endpoint_mode=mode,  # type: ignore[arg-type]
            resync_seconds=_positive(get("RESYNC_SECONDS", str(base.resync_seconds)), "RESYNC_SECONDS"),
            stalled_restarts=int(_positive(get("STALLED_RESTARTS", str(base.stalled_restarts)), "STALLED_RESTARTS")),
            namespaces=tuple(n.strip() for n in namespaces),
            kubeconfig=Path(get("KUBECONFIG", "")) if get("KUBECONFIG", "") else None,
            prometheus_address=prometheus_address(address, f"{ENV_PREFIX}PROMETHEUS_ADDRESS") if address else None,
            fleet_namespace=get("FLEET_NAMESPACE", base.fleet_namespace),
            gateway_http_address=get("GATEWAY_HTTP_ADDRESS", "") or None,
            rollout_seconds=_positive(get("ROLLOUT_SECONDS", str(base.rollout_seconds)), "ROLLOUT_SECONDS"),
            gateway=_gateway_from_env(get),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes from_env() return this config (to run the same operator with `kopf run -m`)."""
        env = {
            "AGGREGATOR_IMAGE": self.aggregator_image,
            "IMAGE": self.operator_image,
            "STATE_STORAGE": self.state_storage,
            "STATE_SIZE": self.state_size,
            "STORAGE_CLASS": self.storage_class or "",
            "ENDPOINT_MODE": self.endpoint_mode,
            "RESYNC_SECONDS": str(self.resync_seconds),
            "STALLED_RESTARTS": str(self.stalled_restarts),
            "NAMESPACES": ",".join(self.namespaces),
            "KUBECONFIG": str(self.kubeconfig) if self.kubeconfig else "",
            "PROMETHEUS_ADDRESS": self.prometheus_address or "",
            "FLEET_NAMESPACE": self.fleet_namespace,
            "GATEWAY_HTTP_ADDRESS": self.gateway_http_address or "",
            "ROLLOUT_SECONDS": str(self.rollout_seconds),
            "GATEWAY_ADDRESS": self.gateway.address if self.gateway else "",
            "GATEWAY_CA_FILE": str(self.gateway.ca_file) if self.gateway else "",
            "GATEWAY_ADMIN_TOKEN_FILE": str(self.gateway.admin_token_file) if self.gateway else "",
            "GATEWAY_PUBLISH_TOKEN_FILE": str(self.gateway.publish_token_file) if self.gateway else "",
        }
        return {ENV_PREFIX + k: v for k, v in env.items()}


#: The settings of the gateway link, all or none: an address without credentials could only fail later.
GATEWAY_SETTINGS = ("GATEWAY_ADDRESS", "GATEWAY_CA_FILE", "GATEWAY_ADMIN_TOKEN_FILE", "GATEWAY_PUBLISH_TOKEN_FILE")


def _gateway_from_env(get: Callable[[str, str], str]) -> GatewayLink | None:
    values = [get(name, "").strip() for name in GATEWAY_SETTINGS]
    if not any(values):
        return None
    names = tuple(ENV_PREFIX + name for name in GATEWAY_SETTINGS)
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        raise ValueError(f"{missing[0]}: must be set with {', '.join(n for n in names if n != missing[0])}")
    address, ca, admin, publish = values
    return GatewayLink.load(address, Path(ca), Path(admin), Path(publish), (names[0], names[1], names[2], names[3]))


def _positive(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name}: must be a number, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"{ENV_PREFIX}{name}: must be greater than 0, got {text!r}")
    return value


def prometheus_address(text: str, name: str) -> str:
    """A Prometheus HTTP API base URL (http or https, a host, optional port and path prefix), without a trailing
    slash; ValueError naming `name` otherwise. Credentials, queries and fragments are refused: queries are
    built onto this base, and a password in a URL would end up in logs and Events."""
    if len(text) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"{name}: must be at most {MAX_ADDRESS_LENGTH} characters, got {len(text)}")
    try:
        url = urllib.parse.urlsplit(text.strip())
        port = url.port  # raises on a port outside 0..65535 or not a number
    except ValueError as err:
        raise ValueError(f"{name}: not a URL ({err}): {text!r}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"{name}: must be an http:// or https:// URL with a host, got {text!r}")
    if url.username is not None or url.password is not None:
        raise ValueError(f"{name}: must not carry credentials, got a URL with a user name")
    if url.query or url.fragment:
        raise ValueError(f"{name}: must have no query or fragment, got {text!r}")
    if port == 0:
        raise ValueError(f"{name}: port must be 1..65535, got {text!r}")
    return urllib.parse.urlunsplit((url.scheme, url.netloc, url.path.rstrip("/"), "", ""))

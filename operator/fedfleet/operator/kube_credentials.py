"""How the operator authenticates to the API server: in-cluster (its ServiceAccount token, re-read on every
request because projected tokens rotate) or from a kubeconfig (client certificate or token).

In a cluster the token and CA are in the pod's ServiceAccount directory, resolved under $FEDFLEET_ROOT when it
is set (the local node agent runs pods as processes; see fedfleet.api.pod_environment).
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedfleet.api import pod_environment


class CredentialsError(Exception):
    """No way to reach the API server was found; the message says what is missing."""


@dataclass(frozen=True)
class KubeCredentials:
    server: str
    ca_file: Path | None
    token_file: Path | None = None
    token: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    namespace: str | None = None  # of the operator's own pod, in a cluster

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text(encoding="ascii").strip()
        return self.token


def in_cluster(environ: Mapping[str, str] | None = None) -> KubeCredentials:
    server = pod_environment.in_cluster_server(environ)
    if server is None:
        raise CredentialsError(
            f"not in a cluster: {pod_environment.KUBERNETES_SERVICE_HOST}/PORT are not set (use --kubeconfig)"
        )
    sa = pod_environment.service_account_dir(environ)
    token = sa / "token"
    if not token.exists():
        raise CredentialsError(f"no service-account token at {token}")
    namespace_file = sa / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.exists() else None
    return KubeCredentials(server, sa / "ca.crt", token_file=token, namespace=namespace)


def from_kubeconfig(path: Path) -> KubeCredentials:
    """The current context of a kubeconfig. Embedded certificates are written to a private temp dir."""
    try:
        config: dict[str, Any] = yaml.safe_load(path.read_text())
        ctx_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    except (OSError, yaml.YAMLError, KeyError, StopIteration, TypeError) as exc:
        raise CredentialsError(f"{path}: not a usable kubeconfig ({exc})") from None
    tmp: Path | None = None

    def materialize(data_key: str, file_key: str, source: dict[str, Any], name: str) -> Path | None:
        nonlocal tmp
        if file_key in source:
            return (path.parent / str(source[file_key])).resolve()
        if data_key not in source:
            return None
        if tmp is None:
            tmp = Path(tempfile.mkdtemp(prefix="fedfleet-operator-"))
        target = tmp / name
        target.touch(mode=0o600)
        target.write_bytes(base64.b64decode(source[data_key]))
        return target

    return KubeCredentials(
        server=str(cluster["server"]),
        ca_file=materialize("certificate-authority-data", "certificate-authority", cluster, "ca.crt"),
        token=user.get("token"),
        token_file=(path.parent / user["tokenFile"]).resolve() if "tokenFile" in user else None,
        cert_file=materialize("client-certificate-data", "client-certificate", user, "client.crt"),
        key_file=materialize("client-key-data", "client-key", user, "client.key"),
        namespace=context.get("namespace"),
    )


def load(kubeconfig: Path | None, environ: Mapping[str, str] | None = None) -> KubeCredentials:
    """--kubeconfig when given, else in-cluster. Never falls back to ~/.kube/config or $KUBECONFIG: an
    operator must not silently act on whichever cluster the shell happens to point at."""
    return from_kubeconfig(kubeconfig) if kubeconfig is not None else in_cluster(environ)

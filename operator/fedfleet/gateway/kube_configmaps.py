"""Reading one ConfigMap from the Kubernetes API server, as the gateway pod's ServiceAccount.

The standard library only (this package must not import a Kubernetes client), like the aggregator's status
reporter: HTTPS with the cluster CA, the pod's token re-read for every request (projected tokens rotate), a
timeout on every call, and a bound on how much of an answer is read, so a broken or hostile endpoint can
neither hang the gateway nor fill its memory.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfleet.api import pod_environment

#: Seconds one GET may take: a poll that hangs would delay every later one.
REQUEST_TIMEOUT = 5.0
#: The API server stores at most 1 MiB per object (etcd's request limit): its JSON encoding (base64 of
#: binaryData included) stays well below this.
MAX_RESPONSE_BYTES = 4 << 20


class ApiUnreachable(Exception):
    """The API server could not be asked or did not answer usefully (network, TLS, 5xx, 401/403, garbage).
    The message is one line; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ConfigMapReader:
    server: str  # https://host:port
    ca_file: Path
    token_file: Path
    namespace: str
    timeout: float = REQUEST_TIMEOUT

    @classmethod
    def in_cluster(cls, namespace: str | None, environ: Mapping[str, str] | None = None) -> ConfigMapReader:
        """The reader of a pod: its API server, CA and token; `namespace` defaults to the pod's own.
        Raises ValueError outside a pod (no KUBERNETES_SERVICE_HOST) or without a namespace."""
        server = pod_environment.in_cluster_server(environ)
        if server is None:
            raise ValueError(
                "viewSource: kind configmap reads the API server as the pod's ServiceAccount, but "
                f"{pod_environment.KUBERNETES_SERVICE_HOST} is not set (not in a pod)"
            )
        sa = pod_environment.service_account_dir(environ)
        if namespace is None:
            try:
                namespace = (sa / "namespace").read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"viewSource.namespace: not set, and the pod's namespace file: {exc}") from None
        return cls(server, sa / "ca.crt", sa / "token", namespace)

    def url(self, name: str) -> str:
        quoted = urllib.parse.quote(name, safe="")
        return f"{self.server}/api/v1/namespaces/{urllib.parse.quote(self.namespace, safe='')}/configmaps/{quoted}"

    def get(self, name: str) -> dict[str, Any] | None:
        """The ConfigMap as JSON, or None when it does not exist. Raises ApiUnreachable (blocking: call it
        from a worker thread)."""
        try:
            token = self.token_file.read_text(encoding="ascii").strip()
            context = ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, UnicodeDecodeError, ssl.SSLError) as exc:
            raise ApiUnreachable(f"the pod's ServiceAccount credentials cannot be read: {exc}") from None
        request = urllib.request.Request(
            self.url(name), headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=self.timeout) as response:
                body = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ApiUnreachable(f"GET {self.url(name)}: HTTP {exc.code} {_api_message(exc)}", exc.code) from None
        except (OSError, ValueError) as exc:  # URLError, TLS, timeouts, connection resets; a malformed URL
            raise ApiUnreachable(f"GET {self.url(name)}: {getattr(exc, 'reason', None) or exc}") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise ApiUnreachable(f"GET {self.url(name)}: more than {MAX_RESPONSE_BYTES} bytes in the answer")
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise ApiUnreachable(f"GET {self.url(name)}: the answer is not JSON") from None
        if not isinstance(obj, dict):
            raise ApiUnreachable(f"GET {self.url(name)}: the answer is not a JSON object")
        return obj


def _api_message(error: urllib.error.HTTPError) -> str:
    """The `message` of a Kubernetes Status body, cut to one short line."""
    try:
        status = json.loads(error.read(64 << 10))
        message = status.get("message", "") if isinstance(status, dict) else ""
    except (OSError, ValueError):
        message = ""
    return " ".join(str(message).split())[:200]

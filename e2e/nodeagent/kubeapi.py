"""A small Kubernetes REST client on the standard library: JSON in, JSON out, watches as line streams.

The node agent works on plain dicts shaped exactly like the API's JSON (camelCase, as in pod manifests), and
needs precise control over patch content types; a generated client gets in the way of both.
Only client-certificate kubeconfigs (what e2e/controlplane/cluster.py writes) are supported.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server, with its status code and Status reason."""

    def __init__(self, code: int, body: bytes, method: str, path: str) -> None:
        self.code = code
        try:
            status: JSON = json.loads(body)
        except ValueError:
            status = {}
        self.reason = str(status.get("reason", ""))
        self.message = str(status.get("message", body[:300].decode(errors="replace")))
        super().__init__(f"{method} {path}: {code} {self.reason}: {self.message}")


class KubeApi:
    """The API server named by a kubeconfig, reached with that kubeconfig's client certificate."""

    def __init__(self, server: str, ssl_context: ssl.SSLContext) -> None:
        self.server = server.rstrip("/")
        self._ctx = ssl_context

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeApi:
        config: JSON = yaml.safe_load(path.read_text())
        ctx_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        # ssl only loads client certificates from files: write them once to a private temp dir.
        tmp = Path(tempfile.mkdtemp(prefix="kubeapi-"))
        cert, key = tmp / "client.crt", tmp / "client.key"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.touch(mode=0o600)
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        ctx.load_cert_chain(str(cert), str(key))
        cert.unlink()
        key.unlink()
        tmp.rmdir()
        return cls(cluster["server"], ctx)

    def _open(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(req, context=self._ctx, timeout=timeout)
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read(), method, path) from None

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        with self._open(method, path, body, params=params, content_type=content_type, timeout=timeout) as r:
            raw = r.read()
        result: JSON = json.loads(raw) if raw else {}
        return result

    def get(self, path: str, **params: str) -> JSON:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body)

    def replace(self, path: str, body: JSON) -> JSON:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: JSON, content_type: str = STRATEGIC_MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60, **params: str) -> Iterator[JSON]:
        """Yield watch events ({"type", "object"}) from resource_version until the server ends the stream."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
            "allowWatchBookmarks": "true",
            **params,
        }
        with self._open("GET", path, params=query, timeout=timeout_seconds + 15) as resp:
            for line in resp:
                if line.strip():
                    event: JSON = json.loads(line)
                    yield event

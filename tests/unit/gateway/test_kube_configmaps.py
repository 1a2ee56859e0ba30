"""Reading a ConfigMap as the pod's ServiceAccount, against a small local HTTPS server standing in for the API
server: the request it makes, and how every kind of trouble becomes one ApiUnreachable line."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedfleet.gateway.kube_configmaps import MAX_RESPONSE_BYTES, ApiUnreachable, ConfigMapReader
from fedfleet.security.certs import generate_ca, issue_server_cert

CA = generate_ca("test cluster CA")
SERVER = issue_server_cert(CA, ["127.0.0.1"])


@dataclass
class Answers:
    """path -> (status, body); every request's path and Authorization header are kept."""

    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Answers, str]]:
    answers = Answers()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answers.seen.append((self.path, self.headers.get("Authorization", "")))
            status, body = answers.routes.get(self.path, (404, b'{"kind":"Status","message":"not found"}'))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    (tmp_path / "server.crt").write_bytes(SERVER.cert_pem)
    (tmp_path / "server.key").write_bytes(SERVER.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield answers, f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def reader(tmp_path: Path, server: str, ca: bytes = CA.cert_pem) -> ConfigMapReader:
    (tmp_path / "ca.crt").write_bytes(ca)
    (tmp_path / "token").write_text("token-one\n")
    return ConfigMapReader(server, tmp_path / "ca.crt", tmp_path / "token", "fedfleet-system", timeout=10.0)


PATH = "/api/v1/namespaces/fedfleet-system/configmaps/fedfleet-fleet-default"


def test_a_get_sends_the_current_token_and_returns_the_object(tmp_path: Path, api: tuple[Answers, str]) -> None:
    answers, server = api
    obj = {"metadata": {"name": "fedfleet-fleet-default", "resourceVersion": "42"}, "data": {"view.json": "{}"}}
    answers.routes[PATH] = (200, json.dumps(obj).encode())
    read = reader(tmp_path, server)
    assert read.get("fedfleet-fleet-default") == obj
    (tmp_path / "token").write_text("token-two\n")  # a projected token was rotated
    read.get("fedfleet-fleet-default")
    assert answers.seen == [(PATH, "Bearer token-one"), (PATH, "Bearer token-two")]


def test_a_missing_configmap_is_none(tmp_path: Path, api: tuple[Answers, str]) -> None:
    _, server = api
    assert reader(tmp_path, server).get("fedfleet-fleet-default") is None


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (403, b'{"kind":"Status","message":"configmaps \\"x\\" is forbidden:\\nno"}', "HTTP 403 configmaps"),
        (500, b"oops", "HTTP 500"),
        (200, b"<html>", "the answer is not JSON"),
        (200, b"[1, 2]", "not a JSON object"),
        (200, b" " * (MAX_RESPONSE_BYTES + 10), f"more than {MAX_RESPONSE_BYTES} bytes"),
    ],
)
def test_trouble_is_one_line_of_api_unreachable(
    tmp_path: Path, api: tuple[Answers, str], status: int, body: bytes, said: str
) -> None:
    answers, server = api
    answers.routes[PATH] = (status, body)
    with pytest.raises(ApiUnreachable) as caught:
        reader(tmp_path, server).get("fedfleet-fleet-default")
    assert said in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.status == (status if status >= 400 else None)


def test_an_untrusted_server_or_none_at_all_is_unreachable(tmp_path: Path, api: tuple[Answers, str]) -> None:
    answers, server = api
    with pytest.raises(ApiUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        reader(tmp_path, server, ca=generate_ca("another CA").cert_pem).get("fedfleet-fleet-default")
    assert answers.seen == []
    with pytest.raises(ApiUnreachable, match="refused"):
        reader(tmp_path, "https://127.0.0.1:1").get("fedfleet-fleet-default")
    (tmp_path / "gone").mkdir()
    unreadable = ConfigMapReader(server, tmp_path / "ca.crt", tmp_path / "gone" / "token", "ns")
    with pytest.raises(ApiUnreachable, match="ServiceAccount credentials cannot be read"):
        unreadable.get("x")


def test_in_a_pod_the_reader_uses_the_pods_account_under_its_root(tmp_path: Path) -> None:
    sa = tmp_path / "var/run/secrets/kubernetes.io/serviceaccount"
    sa.mkdir(parents=True)
    (sa / "namespace").write_text("gateways\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443", "FEDFLEET_ROOT": str(tmp_path)}
    read = ConfigMapReader.in_cluster(None, env)
    assert (read.server, read.namespace, read.token_file) == ("https://10.0.0.1:443", "gateways", sa / "token")
    assert ConfigMapReader.in_cluster("elsewhere", env).namespace == "elsewhere"
    with pytest.raises(ValueError, match="KUBERNETES_SERVICE_HOST is not set"):
        ConfigMapReader.in_cluster("x", {})
    (sa / "namespace").unlink()
    with pytest.raises(ValueError, match=r"viewSource\.namespace: not set"):
        ConfigMapReader.in_cluster(None, env)

"""The Helm chart: its CRD is the generated one, its ClusterRole is exactly what the operator needs, and the
fleet gateway it installs runs as the gateway's code expects (rendered with the project's own helm)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedfleet.gateway.config import parse_gateway_config
from fedfleet.operator.k8s import KINDS
from fedfleet.operator.resources.rbac import aggregator_rules
from fedfleet.security.certs import KeyPair, issue_server_cert
from fedfleet.security.tokens import read_key

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "fedfleet"


def _template(name: str) -> dict[str, Any]:
    # The RBAC templates use Helm only for names and labels: blank those out and read the YAML.
    text = (CHART / "templates" / name).read_text()
    text = re.sub(r"^\s*\{\{-? include \"fedfleet.labels\" .*\}\}\n", "", text, flags=re.M)
    text = re.sub(r"\{\{[^}]*\}\}", "x", text)
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def _allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] and "resourceNames" not in r
        for r in rules
    )


def test_chart_crd_is_the_generated_crd() -> None:
    chart_crd = (CHART / "crds" / "federatedjob.yaml").read_text(encoding="utf-8")
    assert chart_crd == (REPO / "crds" / "federatedjob.yaml").read_text(encoding="utf-8"), (
        "charts/fedfleet/crds/federatedjob.yaml is stale: run make chart-crds"
    )


def test_operator_role_is_limited_and_has_no_wildcards() -> None:
    role = _template("clusterrole.yaml")
    assert role["kind"] == "ClusterRole"
    rules = role["rules"]
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    resources = {res for r in rules for res in r["resources"]}
    assert not {"clusterroles", "clusterrolebindings", "nodes", "customresourcedefinitions/status"} & resources
    # Read-only where it only needs to read.
    assert not _allowed(rules, "apiextensions.k8s.io", "customresourcedefinitions", "create")
    assert not _allowed(rules, "", "secrets", "list")  # it reads its jobs' Secrets by name only


def test_operator_can_create_every_child_it_builds() -> None:
    rules = _template("clusterrole.yaml")["rules"]
    for kind, (prefix, plural) in KINDS.items():
        group = "" if prefix == "/api/v1" else prefix.split("/")[2]
        assert _allowed(rules, group, plural, "create"), kind
        assert _allowed(rules, group, plural, "get"), kind
    assert _allowed(rules, "", "pods", "delete") and _allowed(rules, "", "pods", "watch")
    assert _allowed(rules, "", "events", "create")
    assert _allowed(rules, "fedfleet.io", "federatedjobs", "watch")


def test_roles_it_grants_are_a_subset_of_its_own() -> None:
    # RBAC refuses to let the operator create a Role with permissions it does not hold itself.
    rules = _template("clusterrole.yaml")["rules"]
    for granted in aggregator_rules("any-job"):
        for group in granted["apiGroups"]:
            for resource in granted["resources"]:
                for verb in granted["verbs"]:
                    assert _allowed(rules, group, resource, verb), (group, resource, verb)


def test_binding_targets_the_charts_service_account() -> None:
    binding = _template("clusterrolebinding.yaml")
    account = _template("serviceaccount.yaml")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount" and account["kind"] == "ServiceAccount"


def test_operator_drives_rollouts_through_their_status_only() -> None:
    rules = _template("clusterrole.yaml")["rules"]
    for verb in ("get", "list", "watch", "patch"):
        assert _allowed(rules, "fedfleet.io", "modelrollouts", verb), verb
    assert _allowed(rules, "fedfleet.io", "modelrollouts/status", "patch")
    assert not _allowed(rules, "fedfleet.io", "modelrollouts", "update")  # the Git-managed spec is never written


# --- the chart as Helm renders it (the fleet gateway and what the operator needs of it) ------------------

HELM = sorted(Path(os.environ.get("FEDFLEET_CACHE", Path.home() / ".cache/fedfleet")).glob("controlplane/*/bin/helm"))
needs_helm = pytest.mark.skipif(not HELM, reason="helm is built with the local control plane (make cluster-build)")


def _render(tmp_path: Path, *values: str) -> list[dict[str, Any]]:
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    env.update({f"HELM_{d}_HOME": str(tmp_path / d.lower()) for d in ("CACHE", "CONFIG", "DATA")})
    argv = [str(HELM[-1]), "template", "fedfleet", str(CHART), "--namespace", "fleet-ns", "--kube-version", "1.37.2"]
    for value in values:
        argv += ["--set", value]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@needs_helm
def test_the_gateway_runs_on_its_pod_ip_with_its_certificate_and_volume(tmp_path: Path) -> None:
    docs = _render(tmp_path)
    deployment = _one(docs, "Deployment", "fedfleet-gateway")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"} and deployment["spec"]["replicas"] == 1
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "9464")
    (init,) = pod["spec"]["initContainers"]
    (main,) = pod["spec"]["containers"]
    assert init["command"] == ["python", "-m", "fedfleet.gateway.certinit"]
    assert "--listen-host=$(POD_IP)" in init["args"] and "--host=fedfleet-gateway.fleet-ns.svc" in init["args"]
    assert main["image"] == "fedfleet/fedfleet:0.1.0" and init["image"] == main["image"]
    assert main["command"] == ["fedfleet", "gateway", "--config", "etc/fedfleet/gateway/run/gateway.yaml"]
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"grpc": 7443, "metrics": 9464}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Only the init step holds the CA's key; the gateway holds its keys and its volume.
    assert {m["name"] for m in init["volumeMounts"]} == {"ca", "config", "run"}
    assert {m["name"] for m in main["volumeMounts"]} == {"run", "token-key", "admin", "publish", "data"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "fedfleet-gateway-data"}
    assert pod["spec"]["serviceAccountName"] == "fedfleet-gateway"
    service = _one(docs, "Service", "fedfleet-gateway")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 7443, "metrics": 9464}

    text = _one(docs, "ConfigMap", "fedfleet-gateway")["data"]["gateway.yaml"]
    config = parse_gateway_config(yaml.safe_load(text), "chart")
    assert config.fleets == ["default"] and (config.listen.port, config.http.port if config.http else 0) == (7443, 9464)
    assert config.view_source is not None and config.view_source.namespace == "fleet-ns"
    # The gateway reads both FleetAdmin secrets where their Secrets are mounted.
    mounted = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
    assert (secrets["admin"], secrets["publish"]) == ("fedfleet-gateway-admin", "fedfleet-gateway-publish")
    assert config.auth.admin_token == Path(mounted["admin"]) / "admin.token"
    assert config.auth.publish_token == Path(mounted["publish"]) / "publish.token"
    empty = _render(tmp_path, "gateway.storage.kind=emptyDir")
    pod_spec = _one(empty, "Deployment", "fedfleet-gateway")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert not [d for d in empty if d["kind"] == "PersistentVolumeClaim"]


@needs_helm
def test_the_gateway_secrets_are_usable_and_fresh_for_each_new_install(tmp_path: Path) -> None:
    first, second = _render(tmp_path / "a"), _render(tmp_path / "b")

    def data(docs: list[dict[str, Any]], name: str) -> dict[str, bytes]:
        secret = _one(docs, "Secret", name)
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        return {k: base64.b64decode(v) for k, v in secret["data"].items()}

    tls = data(first, "fedfleet-gateway-tls")
    # What the init step issues with it passes a TLS client that trusts the CA (as devices and aggregators do).
    leaf = issue_server_cert(KeyPair(tls["ca.crt"], tls["ca.key"]), ["127.0.0.1"])
    _handshake(tmp_path, tls["ca.crt"], leaf)
    keys = (
        ("fedfleet-gateway-token-key", "token.key"),
        ("fedfleet-gateway-admin", "admin.token"),
        ("fedfleet-gateway-publish", "publish.token"),
    )
    for name, key in keys:
        path = tmp_path / key
        path.write_bytes(data(first, name)[key])
        assert len(read_key(path)) == 32  # the hex format `fedfleet token keygen` writes
        assert data(first, name) != data(second, name)  # random per install (upgrades reuse them: lookup)
    # Two secrets, or the publish token would be an admin token.
    assert read_key(tmp_path / "publish.token") != read_key(tmp_path / "admin.token")
    assert data(first, "fedfleet-gateway-tls") != data(second, "fedfleet-gateway-tls")


def _handshake(tmp_path: Path, ca_pem: bytes, server: KeyPair) -> None:
    """A TLS handshake over a socket pair: the client trusts `ca_pem` and checks the address 127.0.0.1."""
    (tmp_path / "leaf.crt").write_bytes(server.cert_pem)
    (tmp_path / "leaf.key").write_bytes(server.key_pem)
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(tmp_path / "leaf.crt", tmp_path / "leaf.key")
    client = ssl.create_default_context(cadata=ca_pem.decode())
    near, far = socket.socketpair()

    def accept() -> None:
        with contextlib.suppress(OSError), serving.wrap_socket(far, server_side=True):
            pass

    accepted = threading.Thread(target=accept)
    accepted.start()
    try:
        client.wrap_socket(near, server_hostname="127.0.0.1").close()  # raises SSLCertVerificationError
    finally:
        near.close()
        accepted.join(10)
        far.close()


@needs_helm
def test_the_gateway_reads_only_its_fleets_views(tmp_path: Path) -> None:
    docs = _render(tmp_path, "gateway.fleets={default,phones}")
    role = _one(docs, "Role", "fedfleet-gateway")
    (rule,) = role["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["fedfleet-fleet-default", "fedfleet-fleet-phones"],
        "verbs": ["get", "list", "watch"],
    }
    binding = _one(docs, "RoleBinding", "fedfleet-gateway")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fedfleet-gateway", "namespace": "fleet-ns"}]
    text = _one(docs, "ConfigMap", "fedfleet-gateway")["data"]["gateway.yaml"]
    assert parse_gateway_config(yaml.safe_load(text), "chart").fleets == ["default", "phones"]


@needs_helm
def test_the_operator_gets_the_gateways_ca_and_tokens_and_the_fleets_namespace(tmp_path: Path) -> None:
    docs = _render(tmp_path)
    pod = _one(docs, "Deployment", "fedfleet")["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    args = operator["args"]
    assert "--gateway-address=fedfleet-gateway.fleet-ns.svc:7443" in args
    assert "--gateway-http-address=http://fedfleet-gateway.fleet-ns.svc:9464" in args  # artifact descriptions
    assert "--gateway-ca=/etc/fedfleet/gateway/ca/ca.crt" in args and "--fleet-namespace=fleet-ns" in args
    volumes = {v["name"]: v["secret"] for v in pod["volumes"]}
    assert volumes["gateway-ca"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never the CA's key
    assert volumes["gateway-admin"]["secretName"] == "fedfleet-gateway-admin"
    # The publish token (what the operator copies into jobs) is mounted where its flag points.
    assert volumes["gateway-publish"]["secretName"] == "fedfleet-gateway-publish"
    mounted = {m["name"]: m["mountPath"] for m in operator["volumeMounts"]}
    flags = dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--gateway-") and "=" in a)
    assert flags["gateway-publish-token"] == f"{mounted['gateway-publish']}/publish.token"
    assert flags["gateway-admin-token"] == f"{mounted['gateway-admin']}/admin.token"
    fleets = _one(docs, "Role", "fedfleet-fleets")["rules"]
    assert _allowed(fleets, "", "configmaps", "update") and _allowed(fleets, "", "secrets", "create")
    assert not _allowed(fleets, "", "secrets", "update")  # only the signing keys, by name
    assert any(r.get("resourceNames") == ["fedfleet-fleet-default-signing"] and "update" in r["verbs"] for r in fleets)
    pinned = _render(tmp_path, "gateway.address=127.0.10.250:7443")
    pinned_args = _one(pinned, "Deployment", "fedfleet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--gateway-address=127.0.10.250:7443" in pinned_args
    assert "--gateway-http-address=http://127.0.10.250:9464" in pinned_args
    init = _one(pinned, "Deployment", "fedfleet-gateway")["spec"]["template"]["spec"]["initContainers"][0]
    assert "--host=127.0.10.250" in init["args"]  # the address aggregators use is in the certificate


@needs_helm
def test_without_the_gateway_nothing_of_it_is_installed(tmp_path: Path) -> None:
    docs = _render(tmp_path, "gateway.enabled=false")
    assert not [d for d in docs if "gateway" in d["metadata"]["name"]]
    (operator,) = _one(docs, "Deployment", "fedfleet")["spec"]["template"]["spec"]["containers"]
    assert not [a for a in operator["args"] if a.startswith("--gateway")] and "volumeMounts" not in operator

"""The Helm chart: its CRD is the generated one, its ClusterRole is exactly what the operator needs, its values
schema describes every value with the bounds the programs enforce, every pod runs Pod Security "restricted", and
the fleet gateway it installs runs as the gateway's code expects (rendered with the project's own helm)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from fedfleet.api.aggregator_config import GatewaySection
from fedfleet.gateway.config import GatewayConfig, ViewSource, parse_gateway_config
from fedfleet.operator.config import EndpointMode, StateStorage, prometheus_address
from fedfleet.operator.k8s import KINDS
from fedfleet.operator.main import build_parser
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


def _helm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    env.update({f"HELM_{d}_HOME": str(tmp_path / d.lower()) for d in ("CACHE", "CONFIG", "DATA")})
    return subprocess.run([str(HELM[-1]), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def _helm_template(tmp_path: Path, *values: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`helm template` as a user runs it: no --kube-version, no cluster."""
    argv = ["template", "fedfleet", str(CHART), "--namespace", "fleet-ns", *flags]
    for value in values:
        argv += ["--set", value]
    return _helm(tmp_path, *argv)


def _render(tmp_path: Path, *values: str, flags: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    done = _helm_template(tmp_path, *values, flags=flags)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _refusal(tmp_path: Path, *values: str, flags: tuple[str, ...] = ()) -> str:
    done = _helm_template(tmp_path, *values, flags=flags)
    assert done.returncode != 0, f"rendered although it should not: {values} {flags}"
    assert not done.stdout
    return done.stderr


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
    assert {m["name"] for m in init["volumeMounts"]} == {"ca", "config", "run", "tmp"}
    assert {m["name"] for m in main["volumeMounts"]} == {"run", "token-key", "admin", "publish", "data", "tmp"}
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
    volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
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
    assert not [a for a in operator["args"] if a.startswith("--gateway")]
    # Only its temporary files remain mounted: none of the gateway's Secrets, which are not installed.
    assert operator["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


# --- the values schema: every value described, with the bounds the programs enforce -----------------------

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
#: Kubernetes types the chart passes through to the pod spec: their fields are typed where Pod Security looks,
#: and the API server's own validation refuses the rest (a new Kubernetes may add fields).
PASSED_THROUGH = ("resources", "podSecurityContext", "containerSecurityContext")


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        node = {**SCHEMA["definitions"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _at(path: str) -> dict[str, Any]:
    """The schema of the value at a slash-separated path, e.g. gateway/storage/kind."""
    node = _resolve(SCHEMA)
    for key in path.split("/"):
        node = _resolve(node["properties"][key])
    return node


def _undescribed(values: Any, node: dict[str, Any], path: str) -> list[str]:
    node = _resolve(node)
    if not isinstance(values, dict) or "properties" not in node:
        return []
    missing = []
    for key, value in values.items():
        if key in node["properties"]:
            missing += _undescribed(value, node["properties"][key], f"{path}{key}/")
        elif node.get("additionalProperties") is False:
            missing.append(f"{path}{key}")
    return missing


def _undocumented(values: Any, node: dict[str, Any], path: str) -> list[str]:
    """Keys of objects the chart owns that values.yaml does not show with their default."""
    node = _resolve(node)
    if node.get("additionalProperties") is not False:
        return []
    missing = []
    for key, sub in node["properties"].items():
        if not isinstance(values, dict) or key not in values:
            missing.append(f"{path}{key}")
        else:
            missing += _undocumented(values[key], sub, f"{path}{key}/")
    return missing


def test_every_value_is_described_and_every_described_value_has_a_default() -> None:
    assert _undescribed(VALUES, SCHEMA, "") == []
    assert _undocumented(VALUES, SCHEMA, "") == []


def _objects(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    node = _resolve(node)
    found = [(path, node)] if "properties" in node else []
    for key, sub in node.get("properties", {}).items():
        found += _objects(sub, f"{path}{key}/")
    if isinstance(node.get("items"), dict):
        found += _objects(node["items"], f"{path}[]/")
    return found


def _last(path: str) -> str:
    return path.rstrip("/").rpartition("/")[2]


def test_every_object_the_chart_owns_refuses_unknown_keys() -> None:
    owned = [(path, node) for path, node in _objects(SCHEMA, "") if _last(path) not in PASSED_THROUGH]
    assert len(owned) >= 10
    for path, node in owned:
        assert node.get("additionalProperties") is False, f"{path or '(top)'} accepts unknown keys"
    # Free-form maps take any key but still only strings: Kubernetes refuses anything else there.
    for path in ("nodeSelector", "gateway/podAnnotations", "gateway/nodeSelector"):
        assert _at(path)["additionalProperties"] == {"type": "string"}, path


def _bounds(node: dict[str, Any]) -> dict[str, Any]:
    keys = ("minimum", "maximum", "pattern", "minLength", "maxLength", "minItems", "maxItems")
    return {k: node[k] for k in keys if k in node}


def test_schema_bounds_are_the_ones_the_operator_and_the_gateway_enforce() -> None:
    assert _at("endpointMode")["enum"] == list(typing.get_args(EndpointMode))
    assert _at("stateStorage/kind")["enum"] == list(typing.get_args(StateStorage))
    (log_level,) = [a for a in build_parser()._actions if a.dest == "log_level"]
    assert _at("logLevel")["enum"] == list(log_level.choices or ())
    gateway = GatewayConfig.model_json_schema(by_alias=True)["properties"]
    assert _bounds(_at("gateway/fleets")) == _bounds(gateway["fleets"])
    assert _bounds(_at("gateway/fleets")["items"]) == _bounds(gateway["fleets"]["items"])
    assert _bounds(_at("gateway/checkInIntervalSeconds")) == _bounds(gateway["checkInIntervalSeconds"])
    polls = ViewSource.model_json_schema(by_alias=True)["properties"]["intervalSeconds"]
    assert _bounds(_at("gateway/viewPollSeconds")) == _bounds(polls)


def _operator_accepts_gateway(address: str) -> bool:
    try:
        GatewaySection(address=address, ca_file=Path("ca.crt"), publish_token_file=Path("publish.token"))
    except ValidationError:
        return False
    return True


def _operator_accepts_prometheus(address: str) -> bool:
    try:
        prometheus_address(address, "--prometheus-address")
    except ValueError:
        return False
    return True


#: Addresses the operator takes (the first of each list) and ones it refuses or that are no address at all.
GATEWAY_ADDRESSES = (
    ["fedfleet-gateway.fedfleet-system.svc:7443", "127.0.10.250:7443", "[::1]:7443", "gw:1", "gw:65535"],
    ["gw:0", "gw:65536", "gw:99999", "gw", ":7443", "-gw:7443", "gw:7443/x", "gw :7443", "http://gw:7443"],
)
PROMETHEUS_URLS = (
    ["http://prometheus.monitoring.svc:9090", "https://prom.example/api/prefix", "http://127.0.0.1:9090/"],
    ["ftp://prom:9090", "http://user:pw@prom:9090", "http://prom:9090?x=1", "http://prom:9090#top", "prom:9090",
     "http://", "http://prom :9090"],
)  # fmt: skip


@pytest.mark.parametrize(
    ("path", "samples", "operator_accepts"),
    [
        ("gateway/address", GATEWAY_ADDRESSES, _operator_accepts_gateway),
        ("prometheus/address", PROMETHEUS_URLS, _operator_accepts_prometheus),
    ],
)
def test_an_address_the_schema_lets_through_is_one_the_operator_takes(
    path: str, samples: tuple[list[str], list[str]], operator_accepts: typing.Callable[[str], bool]
) -> None:
    # JSON Schema patterns are searched, not matched: each pattern anchors itself.
    pattern = _at(path)["pattern"]
    good, bad = samples
    for address in good:
        assert re.search(pattern, address) and operator_accepts(address), address
    # A value the operator refuses would crash-loop its pod: the schema refuses it at install instead. It may be
    # stricter than the operator ("http://prom :9090" has a space in its host name; the operator's parser lets
    # it through).
    for address in bad:
        assert not re.search(pattern, address), address
    assert re.search(pattern, "")  # empty: none (Prometheus), the Service's name (gateway)


# --- what Helm refuses, and the chart's main value combinations as Helm renders them ---------------------

REFUSALS = [
    ("resyncSeconds=fast", "at '/resyncSeconds': got string, want number"),
    ("gatway.enabled=true", "at '': additional properties 'gatway' not allowed"),
    ("gateway.tls.hostz={a}", "at '/gateway/tls': additional properties 'hostz' not allowed"),
    ("endpointMode=node", "at '/endpointMode': value must be one of 'pod', 'service'"),
    ("gateway.storage.kind=hostPath", "at '/gateway/storage/kind': value must be one of 'pvc', 'emptyDir'"),
    ("metrics.port=70000", "at '/metrics/port': maximum: got 70,000, want 65,535"),
    ("stateStorage.size=lots", "at '/stateStorage/size': 'lots' does not match pattern"),
    ("gateway.fleets={Default}", "at '/gateway/fleets/0': 'Default' does not match pattern"),
    ("gateway.address=gw:99999", "at '/gateway/address': 'gw:99999' does not match pattern"),
    ("prometheus.address=http://u:p@prom:9090", "at '/prometheus/address': 'http://u:p@prom:9090' does not match"),
    ("podSecurityContext.runAsUser=root", "at '/podSecurityContext/runAsUser': got string, want integer"),
    ("gateway.podAnnotations.team=7", "at '/gateway/podAnnotations/team': got number, want string"),
]


@needs_helm
@pytest.mark.parametrize(("value", "message"), REFUSALS, ids=[v for v, _ in REFUSALS])
def test_a_wrong_type_or_unknown_key_is_refused_naming_it(tmp_path: Path, value: str, message: str) -> None:
    stderr = _refusal(tmp_path, value)
    assert "values don't meet the specifications of the schema(s)" in stderr
    assert message in stderr, stderr


@needs_helm
def test_helm_lint_is_clean_even_when_strict(tmp_path: Path) -> None:
    done = _helm(tmp_path, "lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ERROR]" not in done.stdout and "[WARNING]" not in done.stdout, done.stdout
    refused = _helm(tmp_path, "lint", "--strict", str(CHART), "--set", "resyncSeconds=fast")
    assert refused.returncode != 0 and "at '/resyncSeconds'" in refused.stdout + refused.stderr


@needs_helm
def test_a_cluster_older_than_the_minimum_is_refused_and_a_plain_render_is_not(tmp_path: Path) -> None:
    # A cluster's discovery lists kinds ("v1/Namespace"): these flags make helm template see what
    # `helm install` sees on such a cluster. Without them there is no cluster to judge, and it renders.
    old_cluster = ("--kube-version", "1.29.3", "--api-versions", "v1/Namespace")
    stderr = _refusal(tmp_path, flags=old_cluster)
    assert "fedfleet needs Kubernetes 1.30.0 or newer; this cluster runs v1.29.3" in stderr
    assert _render(tmp_path, flags=("--kube-version", "1.30.0", "--api-versions", "v1/Namespace"))
    assert _render(tmp_path, flags=("--kube-version", "1.29.3"))


def _kinds(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def _operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = _one(docs, "Deployment", "fedfleet")["spec"]["template"]
    return pod


@needs_helm
def test_the_default_render_installs_the_operator_and_the_gateway(tmp_path: Path) -> None:
    docs = _render(tmp_path)
    operator = {
        ("ServiceAccount", "fedfleet"), ("ClusterRole", "fedfleet"), ("ClusterRoleBinding", "fedfleet"),
        ("Role", "fedfleet-fleets"), ("RoleBinding", "fedfleet-fleets"), ("Deployment", "fedfleet"),
        ("Service", "fedfleet-metrics"),
    }  # fmt: skip
    gateway = {(kind, "fedfleet-gateway") for kind in ("ServiceAccount", "Role", "RoleBinding", "ConfigMap")}
    gateway |= {("Deployment", "fedfleet-gateway"), ("Service", "fedfleet-gateway")}
    gateway |= {("Secret", f"fedfleet-gateway-{s}") for s in ("tls", "token-key", "admin", "publish")}
    gateway |= {("PersistentVolumeClaim", "fedfleet-gateway-data")}
    assert _kinds(docs) == operator | gateway
    pod = _operator(docs)
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "fedfleet/operator:0.1.0" and container["command"] == [
        "python",
        "-m",
        "fedfleet.operator",
    ]
    args = container["args"]
    for arg in (
        "--all-namespaces", "--aggregator-image=fedfleet/aggregator:0.1.0", "--operator-image=fedfleet/operator:0.1.0",
        "--state-storage=pvc", "--state-size=1Gi", "--endpoint-mode=pod", "--resync-seconds=3",
        "--metrics-port=8080", "--health-port=8081", "--log-level=INFO",
    ):  # fmt: skip
        assert arg in args, arg
    assert not [a for a in args if a.startswith(("--prometheus-address", "--namespace=", "--storage-class"))]
    # What it was given parses: the operator's own parser takes the rendered arguments.
    parsed = build_parser().parse_args(args)
    assert (parsed.resync_seconds, parsed.metrics_port, parsed.state_storage) == (3.0, 8080, "pvc")
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    assert not [d for d in docs if d["metadata"]["name"].endswith("prometheus-rules")]


@needs_helm
def test_without_metrics_nothing_serves_or_advertises_them(tmp_path: Path) -> None:
    docs = _render(tmp_path, "metrics.enabled=false")
    assert ("Service", "fedfleet-metrics") not in _kinds(docs)
    pod = _operator(docs)
    (container,) = pod["spec"]["containers"]
    assert "--metrics-port=0" in container["args"]  # the operator's "off"
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert "annotations" not in pod["metadata"]  # Prometheus' pod discovery would scrape a closed port


@needs_helm
def test_a_prometheus_address_and_its_rules(tmp_path: Path) -> None:
    docs = _render(
        tmp_path, "prometheus.address=http://prometheus.monitoring.svc:9090", "prometheus.rules.configMap=true"
    )
    (container,) = _operator(docs)["spec"]["containers"]
    assert "--prometheus-address=http://prometheus.monitoring.svc:9090" in container["args"]
    rules = _one(docs, "ConfigMap", "fedfleet-prometheus-rules")["data"]["fedfleet-rules.yaml"]
    assert yaml.safe_load(rules) == yaml.safe_load((CHART / "files" / "rules.yaml").read_text(encoding="utf-8"))


@needs_helm
def test_the_watched_namespaces_and_the_jobs_storage_become_the_operators_flags(tmp_path: Path) -> None:
    # --set passes 0.5 as a string (Helm parses only integers); --set-json or a values file passes a number.
    docs = _render(
        tmp_path, "watchNamespaces={team-a,team-b}", "stateStorage.kind=emptyDir", "stateStorage.storageClassName=fast",
        "endpointMode=service", flags=("--set-json", "resyncSeconds=0.5"),
    )  # fmt: skip
    (container,) = _operator(docs)["spec"]["containers"]
    parsed = build_parser().parse_args(container["args"])
    assert parsed.namespace == ["team-a", "team-b"] and not parsed.all_namespaces
    assert (parsed.state_storage, parsed.storage_class, parsed.endpoint_mode) == ("emptyDir", "fast", "service")
    assert parsed.resync_seconds == 0.5


@needs_helm
def test_the_gateway_keeps_its_artifacts_on_a_claim_or_in_an_empty_dir(tmp_path: Path) -> None:
    claimed = _render(tmp_path, "gateway.storage.size=20Gi", "gateway.storage.storageClassName=standard")
    claim = _one(claimed, "PersistentVolumeClaim", "fedfleet-gateway-data")
    assert (
        claim["spec"]["resources"]["requests"]["storage"] == "20Gi" and claim["spec"]["storageClassName"] == "standard"
    )
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # the models outlive an uninstall
    volumes = {
        v["name"]: v for v in _one(claimed, "Deployment", "fedfleet-gateway")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "fedfleet-gateway-data"}
    empty = _render(tmp_path, "gateway.storage.kind=emptyDir")
    assert not [d for d in empty if d["kind"] == "PersistentVolumeClaim"]
    volumes = {
        v["name"]: v for v in _one(empty, "Deployment", "fedfleet-gateway")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


# --- Pod Security "restricted" -------------------------------------------------------------------------


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}


def _writable_mounts(container: dict[str, Any]) -> dict[str, str]:
    """mountPath -> volume name of the container's writable mounts."""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", []) if not m.get("readOnly")}


@needs_helm
@pytest.mark.parametrize("gateway", [True, False])
def test_every_pod_runs_restricted(tmp_path: Path, gateway: bool) -> None:
    pods = _pods(_render(tmp_path, f"gateway.enabled={str(gateway).lower()}"))
    assert set(pods) == ({"fedfleet", "fedfleet-gateway"} if gateway else {"fedfleet"})
    for name, pod in pods.items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # Secret volumes are mounted with mode 0400: fsGroup is what lets the non-root user read them.
        assert context["fsGroup"] == context["runAsGroup"] > 0, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, where
            assert _writable_mounts(container)["/tmp"] == "tmp", where
            assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}, where
            for mount in container["volumeMounts"]:
                kind = next(k for k in volumes[mount["name"]] if k != "name")
                assert kind in ("secret", "configMap", "emptyDir", "persistentVolumeClaim"), where
                if kind in ("secret", "configMap"):
                    assert mount.get("readOnly") is True, f"{where}: {mount}"


def _under(path: str, mounts: dict[str, str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


@needs_helm
def test_everything_the_gateway_writes_is_on_a_writable_volume(tmp_path: Path) -> None:
    docs = _render(tmp_path)
    pod = _pods(docs)["fedfleet-gateway"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    out_dir = next(a.removeprefix("--out-dir=") for a in init["args"] if a.startswith("--out-dir="))
    assert _under(out_dir, _writable_mounts(init))  # its certificate, key and final configuration
    config = parse_gateway_config(
        yaml.safe_load(_one(docs, "ConfigMap", "fedfleet-gateway")["data"]["gateway.yaml"]), "chart"
    )
    for written in (config.artifact_dir, config.state_dir):  # artifacts, fleet views, spooled uploads
        assert _under(str(written), _writable_mounts(main)), written
    # What the main container reads from the init step's output is not writable to it.
    assert "/etc/fedfleet/gateway/run" not in _writable_mounts(main)


@needs_helm
def test_the_security_contexts_are_values(tmp_path: Path) -> None:
    docs = _render(
        tmp_path, "podSecurityContext.runAsUser=20000", "gateway.containerSecurityContext.readOnlyRootFilesystem=false",
    )  # fmt: skip
    pods = _pods(docs)
    assert pods["fedfleet"]["securityContext"]["runAsUser"] == 20000
    assert pods["fedfleet-gateway"]["securityContext"]["runAsUser"] == 10001  # each pod has its own values
    assert pods["fedfleet-gateway"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert pods["fedfleet"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # null removes a default (Helm's rule), and then the chart sets nothing rather than an empty object.
    bare = _pods(_render(tmp_path, "podSecurityContext=null", "gateway.containerSecurityContext=null"))
    assert "securityContext" not in bare["fedfleet"]
    assert "securityContext" not in bare["fedfleet-gateway"]["containers"][0]

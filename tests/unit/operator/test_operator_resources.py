"""The pure builders: every child is owned by its job, labelled, and only as powerful as it needs to be."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from operator_jobs import job_body

from fedfleet.api.aggregator_config import CLUSTER_ONLY_FIELDS, dump_config, load_config_job, parse_config
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.api.rules import DNS_1035_LABEL, MAX_LABEL_LENGTH, MAX_NAME_LENGTH
from fedfleet.cli import build_parser
from fedfleet.operator import naming
from fedfleet.operator.config import GatewayLink, OperatorConfig
from fedfleet.operator.resources import (
    AGGREGATOR_CONTAINER,
    JobCredentials,
    aggregator_config,
    build_aggregator_pod,
    build_configmap,
    build_gateway_secret,
    build_role,
    build_rolebinding,
    build_secret,
    build_service,
    build_service_account,
    build_state_claim,
    new_job_credentials,
    pod_spec_hash,
)
from fedfleet.operator.resources.pod import service_hosts

CONFIG = OperatorConfig()


def _spec(body: dict[str, Any]) -> FederatedJobSpec:
    return FederatedJobSpec.model_validate(body["spec"])


def _children(credentials: JobCredentials, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    body = job_body() if body is None else body
    spec = _spec(body)
    text = dump_config(aggregator_config(body, spec))
    return [
        build_service_account(body),
        build_role(body),
        build_rolebinding(body),
        build_secret(body, credentials),
        build_configmap(body, text),
        build_state_claim(body, CONFIG),
        build_service(body, spec),
        build_aggregator_pod(body, spec, CONFIG, text),
    ]


def test_every_child_is_controlled_by_its_job_and_labelled(credentials: JobCredentials) -> None:
    for child in _children(credentials):
        meta = child["metadata"]
        assert meta["namespace"] == "team-a", child["kind"]
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "fedfleet.io/v1alpha1",
            "kind": "FederatedJob",
            "name": "digits",
            "uid": "0f1e2d3c-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }, child["kind"]
        assert meta["labels"][naming.LABEL_JOB] == "digits"
        assert meta["labels"][naming.LABEL_MANAGED_BY] == "fedfleet-operator"
        assert meta["name"].startswith("digits-")


def test_names_are_fixed_so_a_restarted_operator_finds_its_children(credentials: JobCredentials) -> None:
    names = {(c["kind"], c["metadata"]["name"]) for c in _children(credentials)}
    assert names == {
        ("ServiceAccount", "digits-aggregator"),
        ("Role", "digits-aggregator"),
        ("RoleBinding", "digits-aggregator"),
        ("Secret", "digits-credentials"),
        ("ConfigMap", "digits-aggregator"),
        ("PersistentVolumeClaim", "digits-state"),
        ("Service", "digits-aggregator"),
        ("Pod", "digits-aggregator"),
    }
    assert _children(credentials) == _children(credentials)  # pure: same input, same objects


# Kubernetes' own name rules (k8s.io/apimachinery/pkg/util/validation), as the API server applies them.
DNS_1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"


def _refusals(child: dict[str, Any]) -> list[str]:
    """What the API server would say against `child`'s name and labels (empty: it accepts them)."""
    meta, problems = child["metadata"], []
    name = meta["name"]
    if child["kind"] == "Service" and (re.fullmatch(DNS_1035_LABEL, name) is None or len(name) > MAX_LABEL_LENGTH):
        problems.append(f"Service name {name!r} is not a DNS-1035 label of at most 63 characters")
    if re.fullmatch(DNS_1123_SUBDOMAIN, name) is None or len(name) > 253:
        problems.append(f"{child['kind']} name {name!r} is not a DNS-1123 subdomain")
    for key, value in meta["labels"].items():
        if re.fullmatch(LABEL_VALUE, value) is None or len(value) > MAX_LABEL_LENGTH:
            problems.append(f"{child['kind']} label {key}={value!r} is not a label value")
    return problems


def test_the_longest_name_the_crd_admits_gives_children_the_api_server_accepts(gateway_link: GatewayLink) -> None:
    # Before the name rules, a dotted name had its Service refused (422) after the other children were made,
    # and a name over ~40 characters made the job CA's common name too long for X.509.
    name, namespace = "j" * MAX_NAME_LENGTH, "n" * 63
    body = job_body(name=name, namespace=namespace)
    credentials = new_job_credentials(f"{namespace}/{name}")  # the job CA, named within X.509's 64 bytes
    children = [*_children(credentials, body), build_gateway_secret(body, gateway_link)]
    assert [problem for child in children for problem in _refusals(child)] == []
    # The server certificate's names: each DNS label of a host name has at most 63 characters.
    assert all(len(label) <= MAX_LABEL_LENGTH for host in service_hosts(body) for label in host.split("."))


def test_one_character_more_and_the_service_name_would_be_refused(credentials: JobCredentials) -> None:
    # MAX_NAME_LENGTH is tight: it is the aggregator's suffix that sets it.
    body = job_body(name="j" * (MAX_NAME_LENGTH + 1))
    (service,) = [c for c in _children(credentials, body) if c["kind"] == "Service"]
    assert _refusals(service) == [
        f"Service name {service['metadata']['name']!r} is not a DNS-1035 label of at most 63 characters"
    ]


def test_aggregator_role_patches_only_its_own_jobs_status() -> None:
    role = build_role(job_body())
    assert role["rules"] == [
        {
            "apiGroups": ["fedfleet.io"],
            "resources": ["federatedjobs/status"],
            "resourceNames": ["digits"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = build_rolebinding(job_body())
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "digits-aggregator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "digits-aggregator", "namespace": "team-a"}]


def test_secret_holds_the_job_ca_and_token_key(credentials: JobCredentials) -> None:
    secret = build_secret(job_body(), credentials)
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(data) == {"ca.crt", "ca.key", "token.key"}
    assert secret["immutable"] is True
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert "team-a/digits" in ca.subject.rfc4514_string()
    assert bytes.fromhex(data["token.key"].decode().strip()) == credentials.token_key
    assert data["ca.key"].startswith(b"-----BEGIN PRIVATE KEY-----")


def test_only_the_init_step_mounts_the_ca_key() -> None:
    body = job_body()
    spec = _spec(body)
    pod = build_aggregator_pod(body, spec, CONFIG, "x")
    (init,) = pod["spec"]["initContainers"]
    (main,) = pod["spec"]["containers"]
    assert {m["name"] for m in init["volumeMounts"]} == {"ca", "config", "run"}
    assert {m["name"] for m in main["volumeMounts"]} == {"auth", "run", "state"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert [i["key"] for i in volumes["ca"]["secret"]["items"]] == ["ca.crt", "ca.key"]
    assert [i["key"] for i in volumes["auth"]["secret"]["items"]] == ["token.key"]
    assert volumes["state"] == {"name": "state", "persistentVolumeClaim": {"claimName": "digits-state"}}


def test_aggregator_pod_runs_the_aggregator_with_its_service_account() -> None:
    body = job_body()
    pod = build_aggregator_pod(body, _spec(body), CONFIG, "x")
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "digits-aggregator"
    assert spec["restartPolicy"] == "OnFailure"  # exit 0 = job complete; a crash restarts and resumes
    (main,) = spec["containers"]
    assert main["image"] == CONFIG.aggregator_image
    assert main["args"][:3] == ["aggregator", "--config", "etc/fedfleet/run/aggregator.yaml"]
    assert main["workingDir"] == "/"
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["FEDFLEET_JOB_NAME"] == "digits" and env["FEDFLEET_JOB_NAMESPACE"] == "team-a"
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"grpc": 50051, "http": 9090}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "resources" not in main
    init = spec["initContainers"][0]
    assert init["image"] == CONFIG.operator_image
    assert "--listen-host=$(POD_IP)" in init["args"]
    assert "digits-aggregator.team-a.svc" in init["args"]


def test_the_aggregator_writes_its_refusal_where_the_kubelet_reads_it() -> None:
    # Exit 2's reason reaches the job's condition only if the option and the container name the same file,
    # and the kubelet falls back to the log's tail for a crash that wrote nothing.
    body = job_body()
    (main,) = build_aggregator_pod(body, _spec(body), CONFIG, "x")["spec"]["containers"]
    assert main["name"] == AGGREGATOR_CONTAINER
    assert main["terminationMessagePath"] == "/dev/termination-log"
    assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"
    args = build_parser().parse_args(main["args"])
    assert args.command == "aggregator"
    assert args.termination_message == Path(main["terminationMessagePath"])


def test_spec_image_ports_and_resources_reach_the_pod() -> None:
    body = job_body({**job_body()["spec"], "aggregator": {
        "image": "registry.example/agg:2", "port": 7000, "httpPort": 7001,
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
    }})  # fmt: skip
    spec = _spec(body)
    pod = build_aggregator_pod(body, spec, CONFIG, "x")
    (main,) = pod["spec"]["containers"]
    assert main["image"] == "registry.example/agg:2"
    assert main["resources"] == {"requests": {"cpu": "500m"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    assert [p["containerPort"] for p in main["ports"]] == [7000, 7001]
    # Prometheus' pod discovery finds /metrics on the HTTP port, whatever the spec makes it.
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "7001" and annotations["prometheus.io/path"] == "/metrics"
    service = build_service(body, spec)
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("grpc", 7000, "grpc"),
        ("http", 7001, "http"),
    ]
    assert service["spec"]["selector"] == {naming.LABEL_JOB: "digits", naming.LABEL_COMPONENT: "aggregator"}


def test_pod_hash_changes_with_what_the_pod_is_built_from_only() -> None:
    body = job_body()
    spec = _spec(body)
    base = pod_spec_hash(body, spec, CONFIG, "config")
    assert pod_spec_hash(body, spec, CONFIG, "config") == base
    assert pod_spec_hash(body, spec, CONFIG, "other config") != base
    other = OperatorConfig(aggregator_image="fedfleet/aggregator:9")
    assert pod_spec_hash(body, spec, other, "config") != base
    pod = build_aggregator_pod(body, spec, CONFIG, "config")
    assert pod["metadata"]["annotations"][naming.ANNOTATION_POD_HASH] == base


def test_empty_dir_state_needs_no_claim() -> None:
    body = job_body()
    pod = build_aggregator_pod(body, _spec(body), OperatorConfig(state_storage="emptyDir"), "x")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    claim = build_state_claim(body, OperatorConfig(storage_class="fast", state_size="2Gi"))
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"] == {"requests": {"storage": "2Gi"}}


def test_configmap_is_an_aggregator_config_for_this_job(tmp_path: Path) -> None:
    body = job_body({**job_body()["spec"], "suspend": True, "activeDeadlineSeconds": 60})
    spec = _spec(body)
    text = build_configmap(body, dump_config(aggregator_config(body, spec)))["data"]["aggregator.yaml"]
    config = parse_config(yaml.safe_load(text), "configmap")
    job = load_config_job(config, tmp_path, "test")
    assert (job.metadata.name, job.metadata.namespace) == ("digits", "team-a")  # tokens are for team-a/digits
    assert job.spec.model_dump(exclude=set(CLUSTER_ONLY_FIELDS)) == spec.model_dump(exclude=set(CLUSTER_ONLY_FIELDS))
    assert job.spec.suspend is False  # cluster-only fields stay out: suspending is not a different job
    assert str(config.state_dir) == "/var/lib/fedfleet/state/0f1e2d3c-uid"
    assert (config.listen.port, config.http.port if config.http else None) == (50051, 9090)
    assert config.tls.generate is False and config.auth.generate is False
    assert str(config.auth.token_key) == "/etc/fedfleet/auth/token.key"


def test_aggregator_config_differs_between_jobs_of_the_same_name() -> None:
    first, second = job_body(), job_body()
    second["metadata"]["uid"] = "another-uid"
    spec = _spec(first)
    assert aggregator_config(first, spec).state_dir != aggregator_config(second, spec).state_dir


@pytest.mark.parametrize("cpu", ["500m", "2", "0.5", "1e3"])
def test_quantities_follow_the_kubernetes_pattern(cpu: str) -> None:
    FederatedJobSpec.model_validate({"rounds": 1, "aggregator": {"resources": {"limits": {"cpu": cpu}}}})


def test_with_a_gateway_the_aggregator_publishes_with_the_jobs_copy_of_its_credentials(
    gateway_link: GatewayLink,
) -> None:
    body = job_body()
    spec = _spec(body)
    config = OperatorConfig(gateway=gateway_link)
    section = aggregator_config(body, spec, gateway_link).gateway
    assert section is not None and section.address == "fedfleet-gateway.fedfleet-system.svc:7443"
    assert (str(section.ca_file), str(section.publish_token_file)) == (
        "/etc/fedfleet/gateway/ca.crt",
        "/etc/fedfleet/gateway/publish.token",
    )
    assert aggregator_config(body, spec).gateway is None  # no gateway: nothing is published

    secret = build_gateway_secret(body, gateway_link)
    assert secret["metadata"]["name"] == "digits-gateway-publish" and secret["metadata"]["namespace"] == "team-a"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "0f1e2d3c-uid" and secret["immutable"] is True
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data == {"ca.crt": gateway_link.ca_pem, "publish.token": gateway_link.publish_token.encode() + b"\n"}
    # The job's namespace never holds the admin token: an aggregator can publish, not change what fleets run.
    assert not any(gateway_link.admin_token.encode() in value for value in data.values())

    pod = build_aggregator_pod(body, spec, config, "x")
    (init,) = pod["spec"]["initContainers"]
    (main,) = pod["spec"]["containers"]
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["gateway"] == {"name": "gateway", "mountPath": "/etc/fedfleet/gateway", "readOnly": True}
    assert "gateway" not in {m["name"] for m in init["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["gateway"]["secret"] == {"secretName": "digits-gateway-publish", "defaultMode": 0o400}
    without = build_aggregator_pod(body, spec, CONFIG, "x")
    assert "gateway" not in {v["name"] for v in without["spec"]["volumes"]}

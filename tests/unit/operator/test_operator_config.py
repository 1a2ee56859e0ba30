"""Operator settings round-trip through the environment (how `kopf run -m` and main() configure handlers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfleet.operator.config import GatewayLink, OperatorConfig
from fedfleet.operator.kube_credentials import CredentialsError, in_cluster


def test_settings_round_trip_through_the_environment() -> None:
    config = OperatorConfig(
        aggregator_image="a:1",
        operator_image="o:1",
        state_storage="emptyDir",
        storage_class="fast",
        endpoint_mode="service",
        resync_seconds=1.5,
        namespaces=("x", "y"),
        kubeconfig=Path("/tmp/kc"),
        prometheus_address="http://127.0.0.1:9090/prom",
    )
    assert OperatorConfig.from_env(config.to_env()) == config
    assert OperatorConfig.from_env({}) == OperatorConfig()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STATE_STORAGE", "disk", "pvc or emptyDir"),
        ("ENDPOINT_MODE", "ingress", "pod or service"),
        ("RESYNC_SECONDS", "0", "greater than 0"),
        ("RESYNC_SECONDS", "soon", "must be a number"),
        ("PROMETHEUS_ADDRESS", "prometheus:9090", "http:// or https:// URL with a host"),
        ("PROMETHEUS_ADDRESS", "ftp://prometheus", "http:// or https:// URL with a host"),
        ("PROMETHEUS_ADDRESS", "http://admin:hunter2@prometheus", "must not carry credentials"),
        ("PROMETHEUS_ADDRESS", "http://prometheus/api?x=1", "no query or fragment"),
        ("PROMETHEUS_ADDRESS", "http://prometheus:99999", "not a URL"),
        ("PROMETHEUS_ADDRESS", "http://prometheus:0", "port must be 1..65535"),
        ("PROMETHEUS_ADDRESS", "http://p/" + "x" * 3000, "at most 2048 characters"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"FEDFLEET_OPERATOR_{name}: .*{message}"):
        OperatorConfig.from_env({f"FEDFLEET_OPERATOR_{name}": value})


def test_a_bad_prometheus_address_never_echoes_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        OperatorConfig.from_env({"FEDFLEET_OPERATOR_PROMETHEUS_ADDRESS": "http://admin:hunter2@prometheus"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
        ("https://prometheus.monitoring.svc:9090/", "https://prometheus.monitoring.svc:9090"),
        (" http://[::1]:9090/prefix/ ", "http://[::1]:9090/prefix"),
    ],
)
def test_prometheus_address_is_kept_as_a_base_url(given: str, kept: str) -> None:
    config = OperatorConfig.from_env({"FEDFLEET_OPERATOR_PROMETHEUS_ADDRESS": given})
    assert config.prometheus_address == kept


def test_in_cluster_credentials_resolve_under_the_pod_root(tmp_path: Path) -> None:
    sa = tmp_path / "var/run/secrets/kubernetes.io/serviceaccount"
    sa.mkdir(parents=True)
    (sa / "token").write_text("tok\n")
    (sa / "namespace").write_text("fedfleet-system")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443", "FEDFLEET_ROOT": str(tmp_path)}
    creds = in_cluster(env)
    assert creds.server == "https://127.0.0.1:6443" and creds.namespace == "fedfleet-system"
    assert creds.bearer() == "tok" and creds.ca_file == sa / "ca.crt"
    with pytest.raises(CredentialsError, match="not in a cluster"):
        in_cluster({})


def test_the_gateway_link_round_trips_and_reads_its_files(gateway_link: GatewayLink) -> None:
    config = OperatorConfig(gateway=gateway_link)
    again = OperatorConfig.from_env(config.to_env())
    assert again == config and again.gateway is not None
    assert again.gateway.admin_token == bytes(range(32)).hex()
    assert again.gateway.publish_token == bytes(range(32, 64)).hex()
    assert again.gateway.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    for secret in (bytes(range(32)).hex(), bytes(range(32, 64)).hex()):
        assert secret not in repr(again)  # a secret never reaches a log line through repr


def test_the_gateway_files_are_read_under_the_pod_root(gateway_link: GatewayLink, tmp_path: Path) -> None:
    root = tmp_path / "pod"
    mounted = root / "etc/fedfleet/gateway"
    mounted.mkdir(parents=True)
    (mounted / "ca.crt").write_bytes(gateway_link.ca_pem)
    (mounted / "admin.token").write_text(gateway_link.admin_token + "\n")
    (mounted / "publish.token").write_text(gateway_link.publish_token + "\n")
    names = ("a", "c", "t", "p")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDFLEET_ROOT", str(root))
        link = GatewayLink.load("gw:7443", Path("/etc/fedfleet/gateway/ca.crt"),
                                Path("/etc/fedfleet/gateway/admin.token"),
                                Path("/etc/fedfleet/gateway/publish.token"), names)  # fmt: skip
    assert (link.ca_pem, link.admin_token, link.publish_token) == (
        gateway_link.ca_pem,
        gateway_link.admin_token,
        gateway_link.publish_token,
    )
    assert link.ca_file == Path("/etc/fedfleet/gateway/ca.crt")  # the setting as given, read under the root


#: A complete, valid set of the gateway settings ({...}: the gateway_link fixture's files).
GOOD = {"GATEWAY_ADDRESS": "gw:7443", "GATEWAY_CA_FILE": "{ca}", "GATEWAY_ADMIN_TOKEN_FILE": "{token}",
        "GATEWAY_PUBLISH_TOKEN_FILE": "{publish}"}  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"GATEWAY_ADDRESS": "gw:7443"}, "FEDFLEET_OPERATOR_GATEWAY_CA_FILE: must be set with"),
        ({"GATEWAY_PUBLISH_TOKEN_FILE": "{publish}"}, "FEDFLEET_OPERATOR_GATEWAY_ADDRESS: must be set with"),
        ({**GOOD, "GATEWAY_PUBLISH_TOKEN_FILE": ""}, "FEDFLEET_OPERATOR_GATEWAY_PUBLISH_TOKEN_FILE: must be set"),
        ({**GOOD, "GATEWAY_ADDRESS": "gw"}, "FEDFLEET_OPERATOR_GATEWAY_ADDRESS: must be HOST:PORT"),
        ({**GOOD, "GATEWAY_CA_FILE": "{missing}"}, "FEDFLEET_OPERATOR_GATEWAY_CA_FILE: cannot read"),
        ({**GOOD, "GATEWAY_CA_FILE": "{token}"}, "FEDFLEET_OPERATOR_GATEWAY_CA_FILE: .* is not a PEM certificate"),
        ({**GOOD, "GATEWAY_ADMIN_TOKEN_FILE": "{ca}"},
         "FEDFLEET_OPERATOR_GATEWAY_ADMIN_TOKEN_FILE: .*must be hex text"),
        ({**GOOD, "GATEWAY_PUBLISH_TOKEN_FILE": "{missing}"},
         "FEDFLEET_OPERATOR_GATEWAY_PUBLISH_TOKEN_FILE: .*cannot read"),
        # The admin token as the publish token would hand it to every job.
        ({**GOOD, "GATEWAY_PUBLISH_TOKEN_FILE": "{token}"},
         "FEDFLEET_OPERATOR_GATEWAY_PUBLISH_TOKEN_FILE: .*holds the admin token"),
    ],
)  # fmt: skip
def test_a_bad_gateway_setting_names_the_variable(
    gateway_link: GatewayLink, tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    files = {"ca": gateway_link.ca_file, "token": gateway_link.admin_token_file,
             "publish": gateway_link.publish_token_file, "missing": tmp_path / "nope"}  # fmt: skip
    env = {f"FEDFLEET_OPERATOR_{k}": v.format(**files) for k, v in settings.items()}
    with pytest.raises(ValueError, match=message):
        OperatorConfig.from_env(env)

"""The gateway pod's init step, run for real in a temporary pod root: a certificate for the pod from the CA
the chart keeps, and a configuration the gateway's own loader accepts, listening on the pod's address."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fedfleet.gateway import certinit
from fedfleet.gateway.config import load_gateway_config
from fedfleet.security.certs import KeyPair, generate_ca

#: As the chart's ConfigMap writes it (charts/fedfleet/templates/gateway-configmap.yaml).
TEMPLATE = """\
listen: {host: 0.0.0.0, port: 7443}
http: {host: 0.0.0.0, port: 9464}
auth:
  tokenKey: /etc/fedfleet/gateway/token-key/token.key
  adminToken: /etc/fedfleet/gateway/admin/admin.token
  publishToken: /etc/fedfleet/gateway/publish/publish.token
artifactDir: /var/lib/fedfleet/gateway/artifacts
stateDir: /var/lib/fedfleet/gateway/state
fleets: ["default", "phones"]
checkInIntervalSeconds: 60
viewSource: {kind: configmap, namespace: fedfleet-system, intervalSeconds: 1}
"""
ARGS = [
    "--ca-dir=/etc/fedfleet/gateway/ca", "--template=/etc/fedfleet/gateway/config/gateway.yaml",
    "--out-dir=/etc/fedfleet/gateway/run", "--listen-host=127.0.10.20",
    "--host", "fedfleet-gateway", "--host", "fedfleet-gateway.fedfleet-system.svc",
]  # fmt: skip


def pod_root(tmp_path: Path, ca: KeyPair, template: str = TEMPLATE) -> Path:
    root = tmp_path / "pod"
    (root / "etc/fedfleet/gateway/ca").mkdir(parents=True)
    (root / "etc/fedfleet/gateway/ca/ca.crt").write_bytes(ca.cert_pem)
    (root / "etc/fedfleet/gateway/ca/ca.key").write_bytes(ca.key_pem)
    (root / "etc/fedfleet/gateway/config").mkdir(parents=True)
    (root / "etc/fedfleet/gateway/config/gateway.yaml").write_text(template)
    return root


def rsa_ca() -> KeyPair:
    """A CA as Helm's genCA or cert-manager often makes one: RSA."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), pem)


@pytest.mark.parametrize("ca", [generate_ca("gateway CA"), rsa_ca()], ids=["ec", "rsa"])
def test_the_pod_gets_a_certificate_and_a_config_listening_on_its_address(tmp_path: Path, ca: KeyPair) -> None:
    root = pod_root(tmp_path, ca)
    assert certinit.main(ARGS, {"FEDFLEET_ROOT": str(root)}) == 0
    run = root / "etc/fedfleet/gateway/run"
    cert = x509.load_pem_x509_certificate((run / "server.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.10.20")]
    assert names.get_values_for_type(x509.DNSName) == ["fedfleet-gateway", "fedfleet-gateway.fedfleet-system.svc"]
    assert (run / "server.key").stat().st_mode & 0o077 == 0
    assert (run / "ca.crt").read_bytes() == ca.cert_pem

    config = load_gateway_config(run / "gateway.yaml")  # what `fedfleet gateway --config` reads
    assert (config.listen.host, config.listen.port) == ("127.0.10.20", 7443)
    assert config.http is not None and (config.http.host, config.http.port) == ("127.0.10.20", 9464)
    assert (config.tls.cert, config.tls.key, config.tls.ca) == (run / "server.crt", run / "server.key", run / "ca.crt")
    assert not config.tls.generate
    assert config.auth.token_key == root / "etc/fedfleet/gateway/token-key/token.key"
    assert config.auth.publish_token == root / "etc/fedfleet/gateway/publish/publish.token"
    assert config.artifact_dir == root / "var/lib/fedfleet/gateway/artifacts"
    assert config.fleets == ["default", "phones"]
    assert config.view_source is not None and config.view_source.namespace == "fedfleet-system"


def test_outside_the_node_agent_paths_stay_as_the_template_says(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = certinit.finalize_config(
        load_gateway_config(_written(tmp_path, TEMPLATE)), "10.1.2.3", certinit.TlsFiles.in_dir(out), {}
    )
    assert config.state_dir == Path("/var/lib/fedfleet/gateway/state") and config.listen.host == "10.1.2.3"


def test_a_template_from_before_the_publish_token_gets_none(tmp_path: Path) -> None:
    older = TEMPLATE.replace("  publishToken: /etc/fedfleet/gateway/publish/publish.token\n", "")
    config = certinit.finalize_config(
        load_gateway_config(_written(tmp_path, older)), "10.1.2.3", certinit.TlsFiles.in_dir(tmp_path / "run"), {}
    )
    assert config.auth.publish_token is None
    assert "publishToken" not in certinit.dump_gateway_config(config)  # the gateway has only the admin token


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("fleets: []\n", "fleets: "),
        ("fleets: [default]\ncolour: blue\n", "colour: unknown field"),
        ("fleets: [default]\n---\nfleets: [x]\n", "expected one YAML document"),
        ("fleets: [default\n", "YAML"),
    ],
)
def test_a_template_the_gateway_would_refuse_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], template: str, said: str
) -> None:
    root = pod_root(tmp_path, generate_ca("gateway CA"), template)
    assert certinit.main(ARGS, {"FEDFLEET_ROOT": str(root)}) == certinit.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    assert not (root / "etc/fedfleet/gateway/run/gateway.yaml").exists()


def test_a_missing_ca_or_a_bad_listen_host_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = pod_root(tmp_path, generate_ca("gateway CA"))
    (root / "etc/fedfleet/gateway/ca/ca.key").unlink()
    assert certinit.main(ARGS, {"FEDFLEET_ROOT": str(root)}) == certinit.EXIT_BAD_INPUT
    assert "ca.key" in capsys.readouterr().err
    root = pod_root(tmp_path / "again", generate_ca("gateway CA"))
    bad_host = [a if not a.startswith("--listen-host") else "--listen-host=" + "x" * 300 for a in ARGS]
    assert certinit.main(bad_host, {"FEDFLEET_ROOT": str(root)}) == certinit.EXIT_BAD_INPUT
    assert "--listen-host: host: " in capsys.readouterr().err


def _written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path

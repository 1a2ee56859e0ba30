"""The aggregator pod's init step, run for real in a temporary pod root."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from operator_jobs import job_body

from fedfleet.aggregator.config import load_config
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.operator import certinit, naming
from fedfleet.operator.resources import JobCredentials, build_configmap


def _pod_root(tmp_path: Path, credentials: JobCredentials) -> Path:
    root = tmp_path / "pod"
    (root / "etc/fedfleet/ca").mkdir(parents=True)
    (root / "etc/fedfleet/ca/ca.crt").write_bytes(credentials.ca_cert_pem)
    (root / "etc/fedfleet/ca/ca.key").write_bytes(credentials.ca_key_pem)
    (root / "etc/fedfleet/config").mkdir(parents=True)
    body = job_body()
    text = build_configmap(body, FederatedJobSpec.model_validate(body["spec"]))["data"]["aggregator.yaml"]
    (root / "etc/fedfleet/config/aggregator.yaml").write_text(text)
    return root


def test_init_step_issues_a_certificate_for_the_pod_and_writes_a_working_config(
    tmp_path: Path, credentials: JobCredentials
) -> None:
    root = _pod_root(tmp_path, credentials)
    argv = [
        "--ca-dir=/etc/fedfleet/ca", "--template=/etc/fedfleet/config/aggregator.yaml", "--out-dir=/etc/fedfleet/run",
        "--listen-host=127.0.10.9", "--host", "127.0.10.9", "--host", "digits-aggregator.team-a.svc",
    ]  # fmt: skip
    assert certinit.main(argv, {"FEDFLEET_ROOT": str(root)}) == 0
    run = root / "etc/fedfleet/run"
    cert = x509.load_pem_x509_certificate((run / "server.crt").read_bytes())
    ca = x509.load_pem_x509_certificate(credentials.ca_cert_pem)
    assert cert.issuer == ca.subject
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.10.9") in names.get_values_for_type(x509.IPAddress)
    assert "digits-aggregator.team-a.svc" in names.get_values_for_type(x509.DNSName)
    assert (run / "server.key").stat().st_mode & 0o077 == 0
    assert (run / "ca.crt").read_bytes() == credentials.ca_cert_pem

    config, job = load_config(run / naming.CONFIG_FILE)  # the aggregator's own loader accepts it
    assert config.listen.host == "127.0.10.9" and config.http is not None and config.http.host == "127.0.10.9"
    assert config.tls.cert == run / "server.crt"
    assert config.auth.token_key == root / "etc/fedfleet/auth/token.key"
    assert config.state_dir == root / "var/lib/fedfleet/state/0f1e2d3c-uid"
    assert (job.metadata.name, job.metadata.namespace) == ("digits", "team-a")


def test_without_a_pod_root_paths_stay_absolute(credentials: JobCredentials) -> None:
    template = yaml.safe_load(
        build_configmap(job_body(), FederatedJobSpec.model_validate(job_body()["spec"]))["data"]["aggregator.yaml"]
    )
    config = certinit.finalize_config(template, "10.0.0.5", {})
    assert config["tls"]["cert"] == "/etc/fedfleet/run/server.crt"
    assert config["listen"] == {"host": "10.0.0.5", "port": 50051}
    assert template["listen"]["host"] == "0.0.0.0"  # the template itself is left alone


def test_missing_ca_is_one_line_and_exit_2(tmp_path: Path, capsys: object) -> None:
    code = certinit.main(
        ["--ca-dir", str(tmp_path / "none"), "--template", str(tmp_path / "t"), "--out-dir", str(tmp_path / "o"),
         "--listen-host", "127.0.0.1"],
        {},
    )  # fmt: skip
    assert code == 2

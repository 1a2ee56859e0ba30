"""The aggregator pod's init step, run for real in a temporary pod root."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from operator_jobs import job_body

from fedfleet.api.aggregator_config import AggregatorConfig, dump_config, load_config, parse_config
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.operator import certinit, naming
from fedfleet.operator.config import GatewayLink
from fedfleet.operator.resources import JobCredentials, aggregator_config


def _pod_root(tmp_path: Path, credentials: JobCredentials) -> Path:
    root = tmp_path / "pod"
    (root / "etc/fedfleet/ca").mkdir(parents=True)
    (root / "etc/fedfleet/ca/ca.crt").write_bytes(credentials.ca_cert_pem)
    (root / "etc/fedfleet/ca/ca.key").write_bytes(credentials.ca_key_pem)
    (root / "etc/fedfleet/config").mkdir(parents=True)
    (root / "etc/fedfleet/config/aggregator.yaml").write_text(dump_config(_template()))
    return root


def _template() -> AggregatorConfig:
    body = job_body()
    return aggregator_config(body, FederatedJobSpec.model_validate(body["spec"]))


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
    assert (config.fleet_size, config.evaluation) == (_template().fleet_size, _template().evaluation)


def test_every_path_field_moves_under_the_pod_root(tmp_path: Path) -> None:
    template = _template().model_copy(update={"ledger_path": Path("/var/lib/fedfleet/ledger.db")})
    config = certinit.finalize_config(template, "127.0.10.9", {"FEDFLEET_ROOT": str(tmp_path)})
    assert config.ledger_path == tmp_path / "var/lib/fedfleet/ledger.db"
    assert config.tls.ca == tmp_path / "etc/fedfleet/run/ca.crt"
    assert certinit.finalize_config(_template(), "127.0.10.9", {}).ledger_path is None  # unset stays unset


def test_a_template_the_aggregator_would_refuse_is_one_line_and_exit_2(
    tmp_path: Path, credentials: JobCredentials, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _pod_root(tmp_path, credentials)
    (root / "etc/fedfleet/config/aggregator.yaml").write_text("job: j.yaml\nfleetSize: 0\n")
    argv = ["--ca-dir=/etc/fedfleet/ca", "--template=/etc/fedfleet/config/aggregator.yaml",
            "--out-dir=/etc/fedfleet/run", "--listen-host=127.0.10.9"]  # fmt: skip
    assert certinit.main(argv, {"FEDFLEET_ROOT": str(root)}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fleetSize: must be at least 1" in err
    assert not (root / "etc/fedfleet/run" / naming.CONFIG_FILE).exists()


def test_without_a_pod_root_paths_stay_absolute() -> None:
    template = _template()
    config = certinit.finalize_config(template, "10.0.0.5", {})
    assert config.tls.cert == Path("/etc/fedfleet/run/server.crt")
    assert (config.listen.host, config.listen.port) == ("10.0.0.5", 50051)
    assert template.listen.host == "0.0.0.0"  # the template itself is left alone
    # Everything but the address and the paths comes through unchanged, and the result is a valid config.
    assert config.model_copy(update={"listen": template.listen, "http": template.http}) == template
    assert parse_config(yaml.safe_load(dump_config(config)), "final") == config


def test_missing_ca_is_one_line_and_exit_2(tmp_path: Path, capsys: object) -> None:
    code = certinit.main(
        ["--ca-dir", str(tmp_path / "none"), "--template", str(tmp_path / "t"), "--out-dir", str(tmp_path / "o"),
         "--listen-host", "127.0.0.1"],
        {},
    )  # fmt: skip
    assert code == 2


def test_the_gateway_files_move_under_the_pod_root_too(gateway_link: GatewayLink, tmp_path: Path) -> None:
    body = job_body()
    template = aggregator_config(body, FederatedJobSpec.model_validate(body["spec"]), gateway_link)
    config = certinit.finalize_config(template, "127.0.10.9", {"FEDFLEET_ROOT": str(tmp_path)})
    assert config.gateway is not None and config.gateway.address == gateway_link.address
    assert config.gateway.ca_file == tmp_path / "etc/fedfleet/gateway/ca.crt"
    assert config.gateway.publish_token_file == tmp_path / "etc/fedfleet/gateway/publish.token"
    assert parse_config(yaml.safe_load(dump_config(config)), "final").gateway == config.gateway

"""Device tokens and the job's certificates."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from fedfleet.security.certs import TlsFiles, generate_ca, issue_server_cert, write_tls_files
from fedfleet.security.tokens import (
    TokenError,
    TokenProblem,
    TokenVerifier,
    issue_token,
    job_identity,
    new_key,
    read_key,
    write_key,
)

NOW = 1_800_000_000.0


def problem(verifier: TokenVerifier, token: str | None, now: float = NOW) -> TokenProblem:
    with pytest.raises(TokenError) as err:
        verifier.verify(token, now=now)
    return err.value.problem


def test_token_names_the_job_and_device_until_it_expires() -> None:
    key = new_key()
    token = issue_token(key, "ns/job", "dev-7", ttl_seconds=60, now=NOW)
    claims = TokenVerifier(key, "ns/job").verify(token, now=NOW + 59)
    assert (claims.job, claims.device_id, claims.expires_at) == ("ns/job", "dev-7", int(NOW) + 60)
    assert problem(TokenVerifier(key, "ns/job"), token, now=NOW + 60) == TokenProblem.EXPIRED


def test_refusals_say_why() -> None:
    key = new_key()
    verifier = TokenVerifier(key, "job-a")
    good = issue_token(key, "job-a", "dev-1", 60, now=NOW)
    assert problem(verifier, None) == TokenProblem.MISSING
    assert problem(verifier, "") == TokenProblem.MISSING
    assert problem(verifier, "v1.abc") == TokenProblem.MALFORMED
    assert problem(verifier, "x" * 5000) == TokenProblem.MALFORMED
    assert problem(verifier, good.replace("v1.", "v2.", 1)) == TokenProblem.MALFORMED
    assert problem(verifier, good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]) == TokenProblem.BAD_SIGNATURE
    assert problem(verifier, issue_token(new_key(), "job-a", "dev-1", 60, now=NOW)) == TokenProblem.BAD_SIGNATURE
    assert problem(verifier, issue_token(new_key(), "job-b", "dev-1", 60, now=NOW)) == TokenProblem.WRONG_JOB
    assert problem(verifier, issue_token(key, "job-b", "dev-1", 60, now=NOW)) == TokenProblem.WRONG_JOB
    # Claims cannot be swapped under a valid signature.
    _, _body, mac = good.split(".")
    other_body = issue_token(key, "job-a", "dev-2", 60, now=NOW).split(".")[1]
    assert problem(verifier, f"v1.{other_body}.{mac}") == TokenProblem.BAD_SIGNATURE


def test_issue_checks_its_input() -> None:
    key = new_key()
    with pytest.raises(ValueError, match="device id"):
        issue_token(key, "job", "", 60)
    with pytest.raises(ValueError, match="ttl"):
        issue_token(key, "job", "dev", 0)
    assert job_identity("job", "team") == "team/job" and job_identity("job") == "job"


def test_key_files(tmp_path: Path) -> None:
    key = new_key()
    write_key(tmp_path / "k", key)
    assert read_key(tmp_path / "k") == key
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    (tmp_path / "bad").write_text("zz\n")
    with pytest.raises(ValueError, match="hex"):
        read_key(tmp_path / "bad")
    (tmp_path / "short").write_text("abcd\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_key(tmp_path / "short")
    with pytest.raises(ValueError, match="cannot read"):
        read_key(tmp_path / "missing")


def test_server_certificate_is_issued_by_the_job_ca_for_its_addresses(tmp_path: Path) -> None:
    ca = generate_ca("job CA")
    server = issue_server_cert(ca, ["localhost", "127.0.0.1"])
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert = x509.load_pem_x509_certificate(server.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(ValueError, match="at least one host"):
        issue_server_cert(ca, [])

    files = TlsFiles.in_dir(tmp_path / "tls")
    write_tls_files(files, "job", ["127.0.0.1"])
    assert files.exist() and files.server_key.stat().st_mode & 0o777 == 0o600
    issued = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca_cert.read_bytes()))


@pytest.mark.parametrize("suffix", ["=", "==", "===", " ", "\n"])
def test_a_token_has_exactly_one_accepted_spelling(suffix: str) -> None:
    key = new_key()
    verifier = TokenVerifier(key, "job-a")
    good = issue_token(key, "job-a", "dev-1", 60, now=NOW)
    assert verifier.verify(good, now=NOW).device_id == "dev-1"
    assert problem(verifier, good + suffix) == TokenProblem.MALFORMED
    version, body, mac = good.split(".")
    assert problem(verifier, f"{version}.{body}{suffix}.{mac}") == TokenProblem.MALFORMED


def test_spare_bits_of_the_last_base64_character_must_be_zero() -> None:
    key = new_key()
    verifier = TokenVerifier(key, "job-a")
    good = issue_token(key, "job-a", "dev-1", 60, now=NOW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(good[-1])
    # A 32-byte MAC leaves 2 spare bits in its 43rd character: flipping one decodes to the same bytes.
    twin = good[:-1] + alphabet[last ^ 1]
    assert twin != good and problem(verifier, twin) == TokenProblem.MALFORMED

"""Certificate names: a label too long for X.509's 64-byte common name is cut and hashed, never refused, and
two long labels stay apart."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from fedfleet.security.certs import MAX_COMMON_NAME_BYTES, common_name, generate_ca, issue_server_cert

# The longest job identity the CRD admits: a 63-character namespace and a 52-character job name.
LONG_NAMESPACE = "n" * 63
LONG_JOB = "j" * 52


def _cn(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def test_a_short_label_is_the_common_name_as_it_is() -> None:
    assert common_name("fedfleet job team-a/digits CA") == "fedfleet job team-a/digits CA"
    exact = "x" * MAX_COMMON_NAME_BYTES
    assert common_name(exact) == exact


@pytest.mark.parametrize(
    "label",
    [
        f"fedfleet job {LONG_NAMESPACE}/{LONG_JOB} CA",
        "x" * (MAX_COMMON_NAME_BYTES + 1),
        "é" * 40,  # 80 bytes in UTF-8: the cut must not split a character
        "",
    ],
    ids=["longest-job", "one-over", "multibyte", "empty"],
)
def test_a_label_that_does_not_fit_is_cut_and_hashed_within_64_bytes(label: str) -> None:
    name = common_name(label)
    assert 0 < len(name.encode("utf-8")) <= MAX_COMMON_NAME_BYTES
    assert name != label
    head, _, digest = name.rpartition("-")
    assert label.startswith(head) and len(digest) == 16 and int(digest, 16) >= 0
    assert common_name(label) == name  # derived, not random: the same label always gets the same name


def test_long_labels_that_begin_alike_get_different_names() -> None:
    first = f"fedfleet job {LONG_NAMESPACE}/{LONG_JOB[:-1]}a CA"
    second = f"fedfleet job {LONG_NAMESPACE}/{LONG_JOB[:-1]}b CA"
    assert common_name(first) != common_name(second)


def test_a_ca_for_the_longest_job_identity_is_made_and_signs() -> None:
    # Before: a name over ~40 characters made the job CA's common name exceed 64 and the operator raised.
    label = f"fedfleet job {LONG_NAMESPACE}/{LONG_JOB} CA"
    ca = generate_ca(label)
    assert _cn(ca.cert_pem) == common_name(label)
    long_host = f"{LONG_JOB}-aggregator.{LONG_NAMESPACE}.svc.cluster.local"
    server = issue_server_cert(ca, [long_host, "127.0.0.1"])
    assert _cn(server.cert_pem) == common_name(long_host)
    sans = x509.load_pem_x509_certificate(server.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert long_host in sans.value.get_values_for_type(x509.DNSName)  # the full name is where clients look

"""A per-job certificate authority and the aggregator's server certificate, made with `cryptography`.

Devices trust the job's CA (shipped with their token), not the system roots: a job's aggregator is reached
at addresses no public CA would certify, and a CA per job means a certificate of one job is worthless for
another. Keys are ECDSA P-256: small, fast to generate and to handshake with.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedfleet.persist.atomic import atomic_write_bytes

#: How long generated certificates are valid. A job runs for hours to days; a new job gets new ones.
DEFAULT_VALIDITY = dt.timedelta(days=90)
#: Backdating covers clock skew between the aggregator and the devices.
CLOCK_SKEW = dt.timedelta(minutes=5)
#: X.509's bound on a common name (RFC 5280 ub-common-name), in UTF-8 bytes as `cryptography` counts it.
MAX_COMMON_NAME_BYTES = 64
#: Hex digits of the hash that stands in for the cut-off part of a long common name (64 bits).
_CN_DIGEST_CHARS = 16


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        return cls(directory / "ca.crt", directory / "server.crt", directory / "server.key")

    def exist(self) -> bool:
        return self.ca_cert.exists() and self.server_cert.exists() and self.server_key.exists()


def common_name(label: str) -> str:
    """`label` as a certificate common name: unchanged when it fits in 64 bytes; otherwise cut short, with a
    hash of the whole label in place of the rest, so two long labels that begin alike (`fedfleet job
    <namespace>/<name> CA` of two long job names) still get different names. Never longer than 64 bytes."""
    encoded = label.encode("utf-8")
    if 0 < len(encoded) <= MAX_COMMON_NAME_BYTES:
        return label
    digest = hashlib.sha256(encoded).hexdigest()[:_CN_DIGEST_CHARS]
    # Cut on bytes, dropping a character the cut would split: the result is still valid UTF-8.
    head = encoded[: MAX_COMMON_NAME_BYTES - _CN_DIGEST_CHARS - 1].decode("utf-8", errors="ignore")
    return f"{head}-{digest}"


def generate_ca(label: str, validity: dt.timedelta = DEFAULT_VALIDITY) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only (path length 0), named `common_name(label)`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name(label))])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def issue_server_cert(ca: KeyPair, hosts: list[str], validity: dt.timedelta = DEFAULT_VALIDITY) -> KeyPair:
    """A TLS server certificate for `hosts` (DNS names or IP addresses), signed by `ca`."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    # EC or RSA: a CA made elsewhere (Helm's genCA, cert-manager) is often RSA; the leaf key is EC either way.
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the CA key must be an elliptic-curve or RSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        # Clients check the SANs, never the CN; a long first host name must not make issuing fail.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name(hosts[0]))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in dict.fromkeys(hosts)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def write_tls_files(files: TlsFiles, job: str, hosts: list[str]) -> None:
    """Generate a CA and a server certificate for `hosts` and write them (keys readable by the owner only).

    The CA's private key is not written: nothing after this needs to sign again, and a key that is never
    stored cannot leak.
    """
    ca = generate_ca(f"fedfleet job {job} CA")
    server = issue_server_cert(ca, hosts)
    atomic_write_bytes(files.ca_cert, ca.cert_pem)
    atomic_write_bytes(files.server_cert, server.cert_pem)
    atomic_write_bytes(files.server_key, server.key_pem)
    files.server_key.chmod(0o600)


def _authority_key_id(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> x509.AuthorityKeyIdentifier:
    """The CA's own key identifier when its certificate has one: verifiers match a leaf's authority key id to
    its issuer's subject key id, and CAs made elsewhere derive theirs differently (Go, hence Helm's genCA,
    truncates SHA-256; `cryptography` hashes the key with SHA-1)."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def read_ca(directory: Path, cert_name: str = "ca.crt", key_name: str = "ca.key") -> KeyPair:
    """A CA's certificate and key from a directory (a mounted Secret); ValueError naming the file."""
    try:
        return KeyPair((directory / cert_name).read_bytes(), (directory / key_name).read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None


def write_issued(files: TlsFiles, ca: KeyPair, hosts: list[str]) -> None:
    """Issue a server certificate for `hosts` with `ca` and write it, its key (owner only) and the CA's
    certificate; the CA's key stays where it is. ValueError when the certificate cannot be issued."""
    server = issue_server_cert(ca, hosts)
    atomic_write_bytes(files.ca_cert, ca.cert_pem)
    atomic_write_bytes(files.server_cert, server.cert_pem)
    atomic_write_bytes(files.server_key, server.key_pem)
    files.server_key.chmod(0o600)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)

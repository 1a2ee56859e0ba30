"""The secrets a job is born with: its own CA (which the aggregator's server certificate chains to, and which
devices trust) and the key its device tokens are signed with. Generated once, when the job's Secret does not
exist yet; never regenerated, or every token handed to devices would stop working."""

from __future__ import annotations

from dataclasses import dataclass

from fedfleet.security.certs import generate_ca
from fedfleet.security.tokens import new_key


@dataclass(frozen=True)
class JobCredentials:
    ca_cert_pem: bytes
    ca_key_pem: bytes
    token_key: bytes  # raw bytes; stored as hex text, the format `fedfleet token` and the aggregator read


def new_job_credentials(identity: str) -> JobCredentials:
    """A fresh CA (ECDSA P-256, may sign leaf certificates only) and a 256-bit token key."""
    ca = generate_ca(f"fedfleet job {identity} CA")
    return JobCredentials(ca.cert_pem, ca.key_pem, new_key())

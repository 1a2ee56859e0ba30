"""The job's Secret: CA certificate and key, and the device-token key."""

from __future__ import annotations

import base64
from typing import Any

from fedfleet.operator import naming
from fedfleet.operator.resources.job_credentials import JobCredentials


def build_secret(job: dict[str, Any], credentials: JobCredentials) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": naming.child_metadata(job, naming.secret_name(job["metadata"]["name"])),
        "type": "Opaque",
        # Immutable: the CA and the token key live as long as the job; devices hold tokens signed with it.
        "immutable": True,
        "data": {
            naming.CA_CERT: b64(credentials.ca_cert_pem),
            naming.CA_KEY: b64(credentials.ca_key_pem),
            naming.TOKEN_KEY: b64(credentials.token_key.hex().encode("ascii") + b"\n"),
        },
    }

"""The job's Secrets: its own CA certificate and key and device-token key; and, when the operator knows a fleet
gateway, a copy of the gateway's CA certificate and publish token for the aggregator to publish the final model
(the publish token only publishes; the admin token never leaves the operator's namespace)."""

from __future__ import annotations

import base64
from typing import Any

from fedfleet.operator import naming
from fedfleet.operator.config import GatewayLink
from fedfleet.operator.resources.job_credentials import JobCredentials


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_secret(job: dict[str, Any], credentials: JobCredentials) -> dict[str, Any]:
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


def build_gateway_secret(job: dict[str, Any], gateway: GatewayLink) -> dict[str, Any]:
    """The gateway's CA and publish token in the job's namespace, where the aggregator pod can mount them.
    Immutable like the job's own Secret: the operator may create Secrets but not change them (its role has no
    patch on Secrets); a job made after the gateway's token changed gets the new one."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": naming.child_metadata(job, naming.gateway_secret_name(job["metadata"]["name"])),
        "type": "Opaque",
        "immutable": True,
        "data": {
            naming.CA_CERT: b64(gateway.ca_pem),
            naming.GATEWAY_PUBLISH_TOKEN: b64(gateway.publish_token.encode("ascii") + b"\n"),
        },
    }

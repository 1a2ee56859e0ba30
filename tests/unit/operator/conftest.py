"""Fixtures of the operator's unit tests."""

from __future__ import annotations

import pytest

from fedfleet.operator.config import GatewayLink
from fedfleet.operator.resources import JobCredentials, new_job_credentials
from fedfleet.security.certs import generate_ca
from fedfleet.security.tokens import write_key

#: The gateway's two FleetAdmin secrets as the gateway_link fixture's files hold them.
ADMIN_TOKEN = bytes(range(32))
PUBLISH_TOKEN = bytes(range(32, 64))


@pytest.fixture(scope="session")
def credentials() -> JobCredentials:
    return new_job_credentials("team-a/digits")


@pytest.fixture
def gateway_link(tmp_path_factory: pytest.TempPathFactory) -> GatewayLink:
    """The fleet gateway as the operator knows it: an address, and its CA, admin token and publish token from
    files (the admin token bytes 0..31, the publish token bytes 32..63)."""
    files = tmp_path_factory.mktemp("gateway")
    (files / "ca.crt").write_bytes(generate_ca("test gateway CA").cert_pem)
    write_key(files / "admin.token", ADMIN_TOKEN)
    write_key(files / "publish.token", PUBLISH_TOKEN)
    names = ("--gateway-address", "--gateway-ca", "--gateway-admin-token", "--gateway-publish-token")
    return GatewayLink.load(
        "fedfleet-gateway.fedfleet-system.svc:7443",
        files / "ca.crt",
        files / "admin.token",
        files / "publish.token",
        names,
    )

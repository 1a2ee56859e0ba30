"""Fixtures of the operator's unit tests."""

from __future__ import annotations

import pytest

from fedfleet.operator.config import GatewayLink
from fedfleet.operator.resources import JobCredentials, new_job_credentials
from fedfleet.security.certs import generate_ca
from fedfleet.security.tokens import write_key


@pytest.fixture(scope="session")
def credentials() -> JobCredentials:
    return new_job_credentials("team-a/digits")


@pytest.fixture
def gateway_link(tmp_path_factory: pytest.TempPathFactory) -> GatewayLink:
    """The fleet gateway as the operator knows it: an address, and its CA and admin token from files."""
    files = tmp_path_factory.mktemp("gateway")
    (files / "ca.crt").write_bytes(generate_ca("test gateway CA").cert_pem)
    write_key(files / "admin.token", bytes(range(32)))
    names = ("--gateway-address", "--gateway-ca", "--gateway-admin-token")
    return GatewayLink.load("fedfleet-gateway.fedfleet-system.svc:7443", files / "ca.crt", files / "admin.token", names)

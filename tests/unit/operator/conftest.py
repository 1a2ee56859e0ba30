"""Fixtures of the operator's unit tests."""

from __future__ import annotations

import pytest

from fedfleet.operator.resources import JobCredentials, new_job_credentials


@pytest.fixture(scope="session")
def credentials() -> JobCredentials:
    return new_job_credentials("team-a/digits")

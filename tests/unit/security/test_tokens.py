"""Device tokens for fleets: the same format as a job's, with `fleet:<name>` as the audience."""

from __future__ import annotations

import pytest

from fedfleet.security.tokens import (
    TokenError,
    TokenProblem,
    TokenVerifier,
    fleet_identity,
    fleet_of,
    issue_token,
    job_identity,
    new_key,
)

NOW = 1_700_000_000.0


def problem(verifier: TokenVerifier, token: str) -> TokenProblem:
    with pytest.raises(TokenError) as info:
        verifier.verify(token, now=NOW)
    return info.value.problem


def test_one_verifier_takes_the_tokens_of_every_fleet_it_serves() -> None:
    key = new_key()
    verifier = TokenVerifier(key, fleet_identity("phones"), also=[fleet_identity("kiosks")])
    for fleet in ("phones", "kiosks"):
        claims = verifier.verify(issue_token(key, fleet_identity(fleet), "dev-1", 60, now=NOW), now=NOW)
        assert fleet_of(claims.job) == fleet and claims.device_id == "dev-1"
    assert problem(verifier, issue_token(key, fleet_identity("cars"), "dev-1", 60, now=NOW)) == TokenProblem.WRONG_JOB
    # A job's token never opens a fleet, even signed with the same key: job names cannot contain ':'.
    assert problem(verifier, issue_token(key, job_identity("phones"), "dev-1", 60, now=NOW)) == TokenProblem.WRONG_JOB
    assert problem(verifier, issue_token(new_key(), fleet_identity("phones"), "d", 60, now=NOW)) == (
        TokenProblem.BAD_SIGNATURE
    )


def test_a_single_audience_verifier_is_unchanged() -> None:
    key = new_key()
    verifier = TokenVerifier(key, "team/job")
    with pytest.raises(TokenError, match="not 'team/job'"):
        verifier.verify(issue_token(key, fleet_identity("team"), "d", 60, now=NOW), now=NOW)
    assert fleet_of("team/job") is None
    with pytest.raises(ValueError, match="must not be empty"):
        fleet_identity("")

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


def test_a_remembered_token_verifies_as_before_and_still_expires() -> None:
    key = new_key()
    remembering = TokenVerifier(key, fleet_identity("phones"), remember=10)
    plain = TokenVerifier(key, fleet_identity("phones"))
    token = issue_token(key, fleet_identity("phones"), "dev-1", 60, now=NOW)
    assert remembering.verify(token, now=NOW) == plain.verify(token, now=NOW)
    assert remembering.remembered == 1
    again = remembering.verify(token, now=NOW + 59)
    assert (again.device_id, again.job) == ("dev-1", fleet_identity("phones"))
    # Remembering skips the signature work, never the clock: past its expiry the same string is refused.
    with pytest.raises(TokenError) as info:
        remembering.verify(token, now=NOW + 60)
    assert info.value.problem == TokenProblem.EXPIRED


def test_only_the_exact_spelling_of_a_verified_token_is_remembered() -> None:
    key = new_key()
    verifier = TokenVerifier(key, fleet_identity("phones"), remember=10)
    token = issue_token(key, fleet_identity("phones"), "dev-1", 60, now=NOW)
    verifier.verify(token, now=NOW)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert problem(verifier, tampered) in (TokenProblem.BAD_SIGNATURE, TokenProblem.MALFORMED)
    assert problem(verifier, token + "=") == TokenProblem.MALFORMED
    # Refused and expired tokens are never remembered: only the one good token is held.
    expired = issue_token(key, fleet_identity("phones"), "dev-2", 60, now=NOW - 120)
    assert problem(verifier, expired) == TokenProblem.EXPIRED
    assert problem(verifier, issue_token(new_key(), fleet_identity("phones"), "dev-3", 60, now=NOW)) == (
        TokenProblem.BAD_SIGNATURE
    )
    assert verifier.remembered == 1


def test_the_table_of_remembered_tokens_is_bounded() -> None:
    key = new_key()
    verifier = TokenVerifier(key, fleet_identity("phones"), remember=3)
    tokens = [issue_token(key, fleet_identity("phones"), f"dev-{i}", 60, now=NOW) for i in range(7)]
    for token in tokens:
        verifier.verify(token, now=NOW)
        assert 1 <= verifier.remembered <= 3
    assert [verifier.verify(t, now=NOW).device_id for t in tokens] == [f"dev-{i}" for i in range(7)]
    assert TokenVerifier(key, "team/job").remembered == 0
    with pytest.raises(ValueError, match="remember must be >= 0"):
        TokenVerifier(key, "team/job", remember=-1)

"""Per-job device tokens: who a device is, for which job, until when — signed with the job's secret key.

The fleet gateway takes the same tokens with a fleet in place of the job: `fleet_identity(name)` is the
audience, a name no job can have (job names are DNS names, which have no colon), so a job's token never
opens a fleet and a fleet's token never opens a job.

A token is `v1.<claims>.<mac>`: base64url (unpadded) of compact JSON claims `{"job", "dev", "exp", "iat"}`
and of HMAC-SHA256(key, "v1." + claims). HMAC and not a public-key signature because only the aggregator
(which holds the job's key, from the job's Secret) ever verifies a token. Verification runs in constant time
in the MAC and never trusts a claim before the MAC is checked — except to say, for a token that fails, that
it was made for another job, which only changes the status code of a refusal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fedfleet.persist.atomic import atomic_write_bytes

VERSION = "v1"
KEY_BYTES = 32
#: Longest token accepted: a bound on the work a garbage credential can cause.
MAX_TOKEN_CHARS = 2048
#: Device ids are names, not payloads.
MAX_DEVICE_ID_CHARS = 128


class TokenProblem(StrEnum):
    MISSING = "missing"  # no credential at all
    MALFORMED = "malformed"  # not a token of this format
    BAD_SIGNATURE = "bad_signature"  # not signed by this job's key
    WRONG_JOB = "wrong_job"  # a token of another job
    EXPIRED = "expired"


class TokenError(Exception):
    """The credential is refused. `problem` says why (and so which status code the caller gets)."""

    def __init__(self, problem: TokenProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


@dataclass(frozen=True)
class DeviceClaims:
    job: str
    device_id: str
    expires_at: int  # unix seconds
    issued_at: int


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def write_key(path: Path, key: bytes) -> None:
    """Store a key as hex text, readable by the owner only."""
    atomic_write_bytes(path, key.hex().encode() + b"\n")
    path.chmod(0o600)


def read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the token key: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the token key must be hex text") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: the token key must be hex text") from None
    if len(key) < 16:
        raise ValueError(f"{path}: the token key has {len(key)} bytes, at least 16 are needed")
    return key


def issue_token(key: bytes, job: str, device_id: str, ttl_seconds: float, now: float | None = None) -> str:
    if not job:
        raise ValueError("job must not be empty")
    _check_device_id(device_id)
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    issued = int(time.time() if now is None else now)
    claims = {"job": job, "dev": device_id, "exp": issued + int(ttl_seconds), "iat": issued}
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{VERSION}.{body}.{_b64(_mac(key, body))}"


class TokenVerifier:
    """Checks tokens of one job against its key; `also` names further audiences the same key serves (a fleet
    gateway serves several fleets with one key)."""

    def __init__(self, key: bytes, job: str, also: Collection[str] = (), remember: int = 0) -> None:
        if remember < 0:
            raise ValueError(f"remember must be >= 0, got {remember}")
        self._key = key
        self.job = job
        self._audiences = frozenset((job, *also))
        self._expected = repr(job) if not also else "one of " + ", ".join(repr(a) for a in sorted(self._audiences))
        # Tokens that verified, with their claims: a device sends the same token with every call, and the
        # MAC, base64 and JSON work is the larger part of a small call's cost in a busy server. Only a token
        # that passed every check is remembered, under its exact spelling, and its expiry is checked on
        # every use; `remember` bounds the table (emptied when full), 0 remembers nothing.
        self._remember = remember
        self._verified: dict[str, DeviceClaims] = {}

    @property
    def remembered(self) -> int:
        """Tokens held as verified now."""
        return len(self._verified)

    def verify(self, token: str | None, now: float | None = None) -> DeviceClaims:
        current = time.time() if now is None else now
        known = self._verified.get(token) if token and len(token) <= MAX_TOKEN_CHARS else None
        claims = known if known is not None else self._signed_claims(token)
        if current >= claims.expires_at:
            raise TokenError(TokenProblem.EXPIRED, f"device token expired {int(current - claims.expires_at)}s ago")
        if known is None and token and self._remember:
            if len(self._verified) >= self._remember:
                self._verified.clear()
            self._verified[token] = claims
        return claims

    def _signed_claims(self, token: str | None) -> DeviceClaims:
        """The claims of a token this key signed for one of the audiences, whatever its expiry."""
        if not token:
            raise TokenError(TokenProblem.MISSING, "no device token: send 'authorization: Bearer <token>'")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError(TokenProblem.MALFORMED, f"device token is longer than {MAX_TOKEN_CHARS} characters")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            raise TokenError(TokenProblem.MALFORMED, f"device token is not a {VERSION} token")
        _, body, mac = parts
        try:
            _unb64(body)
            given = _unb64(mac)
        except ValueError:
            raise TokenError(TokenProblem.MALFORMED, "device token is not canonical unpadded base64url") from None
        claims = _decode_claims(body)
        if not hmac.compare_digest(given, _mac(self._key, body)):
            if claims is not None and claims.job not in self._audiences:
                raise TokenError(TokenProblem.WRONG_JOB, self._wrong_audience(claims.job))
            raise TokenError(TokenProblem.BAD_SIGNATURE, "device token signature is invalid for this job")
        if claims is None:
            raise TokenError(TokenProblem.MALFORMED, "device token claims are unreadable")
        if claims.job not in self._audiences:
            raise TokenError(TokenProblem.WRONG_JOB, self._wrong_audience(claims.job))
        return claims

    def _wrong_audience(self, claimed: str) -> str:
        return f"device token is for {claimed!r}, not {self._expected}"


def _decode_claims(body: str) -> DeviceClaims | None:
    try:
        data = json.loads(_unb64(body))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    job, device, expires, issued = data.get("job"), data.get("dev"), data.get("exp"), data.get("iat", 0)
    if not (isinstance(job, str) and isinstance(device, str) and type(expires) is int and type(issued) is int):
        return None
    try:
        _check_device_id(device)
    except ValueError:
        return None
    return DeviceClaims(job=job, device_id=device, expires_at=expires, issued_at=issued)


def _check_device_id(device_id: str) -> None:
    if not device_id or len(device_id) > MAX_DEVICE_ID_CHARS or not device_id.isprintable():
        raise ValueError(f"device id must be 1..{MAX_DEVICE_ID_CHARS} printable characters")


def _mac(key: bytes, body: str) -> bytes:
    return hmac.new(key, f"{VERSION}.{body}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Unpadded base64url only, and only its canonical form: a token has exactly one accepted spelling, so
    appended padding or non-zero spare bits are refused instead of verifying the same signature again."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def job_identity(name: str, namespace: str | None = None) -> str:
    """The job name tokens are issued for: `namespace/name` in a cluster, `name` locally."""
    return f"{namespace}/{name}" if namespace else name


#: What a fleet's audience starts with; `fleet_of` reads it back.
FLEET_PREFIX = "fleet:"


def fleet_identity(name: str) -> str:
    """The audience of a fleet's device tokens (`fedfleet token issue --fleet NAME`)."""
    if not name:
        raise ValueError("fleet name must not be empty")
    return f"{FLEET_PREFIX}{name}"


def fleet_of(audience: str) -> str | None:
    """The fleet a verified token's audience names, or None for a job's token."""
    return audience.removeprefix(FLEET_PREFIX) if audience.startswith(FLEET_PREFIX) else None

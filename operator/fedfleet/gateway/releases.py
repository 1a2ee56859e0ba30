"""Signed release records as the gateway holds them: the exact bytes the operator signed, the signature and the
key id, checked against the artifact they describe.

The gateway never verifies signatures (devices do, against the keys they trust; the gateway holds no key), but
it refuses a release that cannot be the one for its artifact — a record naming another digest or size — so an
operator's mistake surfaces at `PutFleetView` instead of on every device of the fleet.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

#: An artifact digest as the store names it.
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
#: A release record is a few hundred bytes of JSON.
MAX_RECORD_BYTES = 8192
#: An Ed25519 signature is 64 bytes; a little room for other schemes.
MAX_SIGNATURE_BYTES = 512
MAX_KEY_ID_CHARS = 128


class ReleaseError(ValueError):
    """The release breaks a rule; the message names it."""


@dataclass(frozen=True)
class Release:
    digest: str
    size: int
    record: bytes  # what was signed
    signature: bytes
    key_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "size": self.size,
            "record": base64.b64encode(self.record).decode("ascii"),
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "keyId": self.key_id,
        }

    @classmethod
    def from_json(cls, data: Any) -> Release:
        if not isinstance(data, dict):
            raise ReleaseError("a release must be an object")
        try:
            record = base64.b64decode(data["record"], validate=True)
            signature = base64.b64decode(data["signature"], validate=True)
            digest, size, key_id = data["digest"], data["size"], data["keyId"]
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ReleaseError(f"a release needs digest, size, record, signature and keyId: {exc}") from None
        if type(size) is not int:
            raise ReleaseError("a release's size must be an integer")
        return parse_release(digest, record, signature, key_id, size)


def check_digest(digest: object, field: str) -> str:
    if not isinstance(digest, str) or not DIGEST_PATTERN.fullmatch(digest):
        raise ReleaseError(f"{field}: must be an artifact digest 'sha256:<64 lowercase hex>'")
    return digest


def parse_release(digest: str, record: bytes, signature: bytes, key_id: str, size: int) -> Release:
    """A release for the artifact `digest` of `size` bytes; raises ReleaseError naming what does not fit."""
    where = f"releases[{digest!r}]"
    check_digest(digest, where)
    if not 0 < len(record) <= MAX_RECORD_BYTES:
        raise ReleaseError(f"{where}.record: must be 1..{MAX_RECORD_BYTES} bytes")
    if not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
        raise ReleaseError(f"{where}.signature: must be 1..{MAX_SIGNATURE_BYTES} bytes")
    if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID_CHARS or not key_id.isprintable():
        raise ReleaseError(f"{where}.key_id: must be 1..{MAX_KEY_ID_CHARS} printable characters")
    try:
        fields = json.loads(record)
    except (UnicodeDecodeError, ValueError):
        raise ReleaseError(f"{where}.record: must be a JSON object") from None
    if not isinstance(fields, dict):
        raise ReleaseError(f"{where}.record: must be a JSON object")
    if fields.get("digest") != digest:
        raise ReleaseError(f"{where}.record: names digest {fields.get('digest')!r}, not the artifact's")
    if fields.get("size") != size:
        raise ReleaseError(f"{where}.record: says {fields.get('size')!r} bytes; the artifact has {size}")
    if "key_id" in fields and fields["key_id"] != key_id:
        raise ReleaseError(f"{where}.key_id: {key_id!r} is not the record's key {fields['key_id']!r}")
    return Release(digest=digest, size=size, record=record, signature=signature, key_id=key_id)

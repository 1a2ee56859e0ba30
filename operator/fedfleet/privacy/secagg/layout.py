"""What client and server agree on about the shared secrets: the field, sizes and share coordinates."""

from __future__ import annotations

from .field import DEFAULT_FIELD
from .keys import sealed_length

FIELD = DEFAULT_FIELD  # GF(2^521 − 1): one element holds a 32-byte secret
SECRET_BYTES = 32  # both shared secrets: the self-mask seed b and the raw X25519 masking key s_sk
SHARE_PLAINTEXT_BYTES = 2 * FIELD.element_bytes  # a sealed pair: share of b ‖ share of s_sk
SEALED_SHARE_BYTES = sealed_length(SHARE_PLAINTEXT_BYTES)  # nonce ‖ ciphertext ‖ tag


def share_x(holder: int) -> int:
    """The x coordinate at which ``holder``'s shares are evaluated (x = 0 is the secret itself)."""
    return holder + 1

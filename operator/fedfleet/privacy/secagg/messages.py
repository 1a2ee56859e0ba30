"""Messages exchanged in one secure-aggregation round.

Frozen dataclasses with only ints, bytes and tuples so that each maps one-to-one onto a protobuf message.
A client's identity is never a field of what it uploads: the transport authenticates the device and hands
its slot id to the server next to the message, so a client cannot speak for another.

Client ids are the slots 0..n-1 of the round's cohort; the share of a secret held by client ``v`` is the
sharing polynomial evaluated at ``x = v + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Stage(IntEnum):
    """The four stages of Bonawitz et al. 2017 (the consistency check of the active model is omitted)."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    UNMASK = 3


# --- stage 0 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKeys:
    """Client → server: the two X25519 public keys of this round (raw 32 bytes each)."""

    round_id: int
    encryption_key: bytes  # c_pk: agreed with a neighbour's to encrypt the shares sent to it
    masking_key: bytes  # s_pk: agreed with a neighbour's to seed their pairwise mask


@dataclass(frozen=True)
class NeighbourKeys:
    client_id: int
    encryption_key: bytes
    masking_key: bytes


@dataclass(frozen=True)
class KeyBroadcast:
    """Server → client: the public keys of the client's neighbours that advertised, sorted by id."""

    round_id: int
    neighbours: tuple[NeighbourKeys, ...]


# --- stage 1 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedShare:
    """Shares of one client's two secrets for one neighbour, sealed with AES-GCM (nonce ‖ ciphertext ‖ tag).

    ``peer`` is the receiver in an upload (:class:`ShareKeys`) and the sender in a download
    (:class:`ShareBundle`).
    """

    peer: int
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Client → server: one sealed share pair per neighbour listed in its :class:`KeyBroadcast`."""

    round_id: int
    self_mask_commitment: bytes  # SHA-256 binding of the self-mask seed, to check its reconstruction
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class ShareBundle:
    """Server → client: the sealed shares its neighbours addressed to it. These are also the
    neighbours it must add pairwise masks with."""

    round_id: int
    shares: tuple[EncryptedShare, ...]


# --- stage 2 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskedInput:
    """Client → server: y = x + PRG(b) + Σ ±PRG(s_uv) mod 2^k, as little-endian words of the ring's width.

    ``complaints`` lists the neighbours whose sealed shares did not open: the server drops them.
    """

    round_id: int
    masked: bytes
    complaints: tuple[int, ...] = ()


# --- stage 3 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnmaskRequest:
    """Server → client: which of its neighbours survived (reveal their self-mask share) and which dropped
    (reveal their masking-key share). An honest client never reveals both for the same neighbour."""

    round_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class RevealedShare:
    owner: int  # whose secret this is a share of
    share: bytes  # the field element, big-endian, fixed width


@dataclass(frozen=True)
class UnmaskResponse:
    """Client → server: exactly the shares asked for in its :class:`UnmaskRequest`."""

    round_id: int
    self_mask_shares: tuple[RevealedShare, ...]
    masking_key_shares: tuple[RevealedShare, ...]

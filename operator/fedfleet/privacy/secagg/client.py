"""The client side of one secure-aggregation round: a state machine with one method per stage.

Each method consumes the server's message for that stage and returns the client's reply. Anything the
server sends that breaks the protocol raises :class:`SecAggAborted`, after which the client answers
nothing more: refusing is always safe, while going on could reveal its input.
"""

from __future__ import annotations

import os
from typing import NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import keys, masking, ring
from .config import SecAggConfig
from .errors import ProtocolStateError, SecAggAborted
from .field import FieldError
from .layout import FIELD, SHARE_PLAINTEXT_BYTES, share_x
from .messages import (
    EncryptedShare,
    KeyBroadcast,
    MaskedInput,
    PublicKeys,
    RevealedShare,
    ShareBundle,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from .ring import U64Vector
from .shamir import split_secret_at


class SecAggClient:
    """One client (cohort slot ``client_id``) in one round. Fresh keys and self-mask seed per instance."""

    def __init__(self, config: SecAggConfig, client_id: int) -> None:
        if not 0 <= client_id < config.num_clients:
            raise ValueError(f"client_id must be in 0..{config.num_clients - 1}, got {client_id}")
        self.config = config
        self.client_id = client_id
        self._neighbours = config.neighbours(client_id)
        self._encryption_key = X25519PrivateKey.generate()
        self._masking_key = X25519PrivateKey.generate()
        self._self_seed = os.urandom(masking.SEED_BYTES)
        self._next: Stage | None = Stage.ADVERTISE_KEYS
        self._peers: dict[int, X25519PublicKey] = {}  # neighbour → its masking public key
        self._aead_keys: dict[int, bytes] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner → (share of its b, share of its s_sk)

    # --- stage 0 ---------------------------------------------------------------------------------------

    def advertise_keys(self) -> PublicKeys:
        self._enter(Stage.ADVERTISE_KEYS)
        return PublicKeys(
            round_id=self.config.round_id,
            encryption_key=keys.public_bytes(self._encryption_key),
            masking_key=keys.public_bytes(self._masking_key),
        )

    # --- stage 1 ---------------------------------------------------------------------------------------

    def share_keys(self, broadcast: KeyBroadcast) -> ShareKeys:
        """Split b and s_sk t-of-k among the advertised neighbours and seal each pair of shares."""
        self._enter(Stage.SHARE_KEYS)
        cfg = self.config
        self._check_round(Stage.SHARE_KEYS, broadcast.round_id)
        ids = [n.client_id for n in broadcast.neighbours]
        if len(set(ids)) != len(ids) or not set(ids) <= self._neighbours:
            self._abort(Stage.SHARE_KEYS, "key broadcast lists a client twice or one that is not a neighbour")
        if len(ids) < cfg.threshold:
            self._abort(Stage.SHARE_KEYS, f"only {len(ids)} neighbours advertised keys, need {cfg.threshold}")
        seen = {keys.public_bytes(self._encryption_key), keys.public_bytes(self._masking_key)}
        for n in broadcast.neighbours:
            if n.encryption_key in seen or n.masking_key in seen or n.encryption_key == n.masking_key:
                self._abort(Stage.SHARE_KEYS, f"neighbour {n.client_id} reuses a public key")
            seen.update((n.encryption_key, n.masking_key))
            try:
                self._aead_keys[n.client_id] = keys.share_key(
                    self._encryption_key,
                    n.encryption_key,
                    session=cfg.session,
                    round_id=cfg.round_id,
                    own_id=self.client_id,
                    peer_id=n.client_id,
                )
                # Its low-order check happens at the first agreement, in stage 2.
                self._peers[n.client_id] = keys.load_public_key(n.masking_key, probe=False)
            except keys.CryptoError as exc:
                self._abort(Stage.SHARE_KEYS, f"neighbour {n.client_id}: {exc}")
        holders = sorted(ids)
        xs = [share_x(v) for v in holders]
        b_shares = split_secret_at(self._self_seed, cfg.threshold, xs, field=FIELD)
        s_shares = split_secret_at(keys.private_bytes(self._masking_key), cfg.threshold, xs, field=FIELD)
        sealed = tuple(
            EncryptedShare(
                peer=v,
                ciphertext=keys.seal(
                    self._aead_keys[v],
                    FIELD.encode(b.y) + FIELD.encode(s.y),
                    round_id=cfg.round_id,
                    sender=self.client_id,
                    receiver=v,
                ),
            )
            for v, b, s in zip(holders, b_shares, s_shares, strict=True)
        )
        commitment = keys.self_mask_commitment(
            self._self_seed, session=cfg.session, round_id=cfg.round_id, client_id=self.client_id
        )
        return ShareKeys(round_id=cfg.round_id, self_mask_commitment=commitment, shares=sealed)

    # --- stage 2 ---------------------------------------------------------------------------------------

    def masked_input(self, bundle: ShareBundle, vector: U64Vector) -> MaskedInput:
        """Open the neighbours' shares and upload x + PRG(b) + Σ_v ±PRG(s_uv) mod 2^k.

        ``vector`` is the quantized input, ``vector_length`` elements of Z_2^k. Masks are added for every
        neighbour in the bundle, also those whose shares do not open (they are reported as complaints and
        the server removes their masks as for a dropout).
        """
        cfg = self.config
        x = np.asarray(vector)
        if x.shape != (cfg.vector_length,) or x.dtype.kind not in "ui":
            raise ValueError(f"input must be {cfg.vector_length} integers, got {x.dtype} {x.shape}")
        if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << cfg.modulus_bits):
            raise ValueError(f"input has values outside Z_2^{cfg.modulus_bits}")
        self._enter(Stage.MASKED_INPUT)
        self._check_round(Stage.MASKED_INPUT, bundle.round_id)
        senders = [s.peer for s in bundle.shares]
        if len(set(senders)) != len(senders) or not set(senders) <= set(self._peers):
            self._abort(Stage.MASKED_INPUT, "share bundle lists a sender twice or one that advertised no keys")
        if len(senders) < cfg.threshold:
            self._abort(Stage.MASKED_INPUT, f"only {len(senders)} neighbours shared keys, need {cfg.threshold}")
        complaints = []
        for item in bundle.shares:
            try:
                plain = keys.open_sealed(
                    self._aead_keys[item.peer],
                    item.ciphertext,
                    round_id=cfg.round_id,
                    sender=item.peer,
                    receiver=self.client_id,
                )
                if len(plain) != SHARE_PLAINTEXT_BYTES:
                    raise keys.CryptoError(f"share plaintext is {len(plain)} bytes")
                half = FIELD.element_bytes
                FIELD.decode(plain[:half])
                FIELD.decode(plain[half:])
            except (keys.CryptoError, FieldError):
                complaints.append(item.peer)
                continue
            self._held[item.peer] = (plain[:half], plain[half:])
        acc = x.astype(np.uint64, copy=True)
        masking.add_mask(acc, self._self_seed, +1, cfg.modulus_bits)
        for v in senders:
            try:
                seed = keys.mask_seed(
                    self._masking_key,
                    self._peers[v],
                    session=cfg.session,
                    round_id=cfg.round_id,
                    own_id=self.client_id,
                    peer_id=v,
                )
            except keys.CryptoError as exc:
                self._abort(Stage.MASKED_INPUT, f"neighbour {v}'s masking key: {exc}")
            masking.add_pairwise_mask(acc, seed, self.client_id, v, cfg.modulus_bits)
        ring.reduce(acc, cfg.modulus_bits)
        return MaskedInput(
            round_id=cfg.round_id,
            masked=ring.encode(acc, cfg.modulus_bits),
            complaints=tuple(sorted(complaints)),
        )

    # --- stage 3 ---------------------------------------------------------------------------------------

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal the self-mask share of each surviving neighbour and the masking-key share of each dropped
        one — never both kinds for one neighbour."""
        self._enter(Stage.UNMASK)
        self._check_round(Stage.UNMASK, request.round_id)
        survivors, dropped = request.survivors, request.dropped
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            self._abort(Stage.UNMASK, "unmask request lists a client twice")
        if set(survivors) & set(dropped):
            self._abort(Stage.UNMASK, "unmask request lists a client as both survivor and dropped")
        unknown = (set(survivors) | set(dropped)) - set(self._held)
        if unknown:
            self._abort(Stage.UNMASK, f"unmask request asks for shares this client does not hold: {sorted(unknown)}")
        response = UnmaskResponse(
            round_id=self.config.round_id,
            self_mask_shares=tuple(RevealedShare(owner=v, share=self._held[v][0]) for v in survivors),
            masking_key_shares=tuple(RevealedShare(owner=v, share=self._held[v][1]) for v in dropped),
        )
        self._forget()
        return response

    # --- helpers ---------------------------------------------------------------------------------------

    def _enter(self, stage: Stage) -> None:
        if self._next is not stage:
            state = "finished or aborted" if self._next is None else f"expecting {self._next.name}"
            raise ProtocolStateError(f"client {self.client_id}: cannot run {stage.name}, {state}")
        self._next = Stage(stage + 1) if stage < Stage.UNMASK else None

    def _check_round(self, stage: Stage, round_id: int) -> None:
        if round_id != self.config.round_id:
            self._abort(stage, f"message for round {round_id}, this is round {self.config.round_id}")

    def _abort(self, stage: Stage, reason: str) -> NoReturn:
        self._forget()
        raise SecAggAborted(stage, f"client {self.client_id}: {reason}")

    def _forget(self) -> None:
        # Drop references to the secrets once they can no longer be needed (best effort in Python).
        self._next = None
        self._held.clear()
        self._aead_keys.clear()
        self._self_seed = b""

"""The server side of one secure-aggregation round: collect each stage's messages, close it, go on.

For each stage the transport calls ``receive_*`` once per arriving client message and ``close_*`` at the
deadline; ``close_*`` returns the per-client messages of the next stage. A malformed message drops its
sender (``ClientRejected``) and the round goes on; when too few clients remain for the masks to be
removable the round ends with ``SecAggAborted``. The server learns only the sum of the inputs of the
clients in ``SecAggResult.included``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NoReturn

import numpy as np
from numpy.typing import NDArray

from . import keys, masking, ring
from .config import SecAggConfig
from .errors import ClientRejected, ProtocolStateError, SecAggAborted
from .field import FieldError
from .layout import FIELD, SEALED_SHARE_BYTES, SECRET_BYTES, share_x
from .messages import (
    EncryptedShare,
    KeyBroadcast,
    MaskedInput,
    NeighbourKeys,
    PublicKeys,
    RevealedShare,
    ShareBundle,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from .ring import U64Vector
from .shamir import ShamirError, Share, reconstruct_secret

_RECONSTRUCTION_ATTEMPTS = 64


class ExclusionReason(StrEnum):
    SILENT = "silent"  # sent nothing (valid) before the stage closed
    MALFORMED = "malformed"  # its message failed validation
    ISOLATED = "isolated"  # too few live neighbours left to hold shares of its secrets
    COMPLAINED = "complained"  # a neighbour could not open the shares it sealed for it


@dataclass(frozen=True)
class Exclusion:
    """Why a client's input is not in the sum, and at which stage it left."""

    stage: Stage
    reason: ExclusionReason
    detail: str = ""


@dataclass(frozen=True)
class SecAggResult:
    total: U64Vector  # Σ_{u ∈ included} x_u mod 2^modulus_bits
    included: frozenset[int]
    excluded: Mapping[int, Exclusion]
    silent_in_unmask: frozenset[int] = frozenset()  # included, but sent no (valid) unmask response
    false_shares: frozenset[int] = frozenset()  # revealed a share that contradicts its owner's secret
    modulus_bits: int = 32


@dataclass
class _Unmask:
    self_mask: dict[int, int] = field(default_factory=dict)  # owner → y
    masking_key: dict[int, int] = field(default_factory=dict)


class SecAggServer:
    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self._stage: Stage | None = Stage.ADVERTISE_KEYS  # the stage accepting messages
        self._aborted: SecAggAborted | None = None
        self._live: frozenset[int] = frozenset(range(config.num_clients))  # may send in the open stage
        self._excluded: dict[int, Exclusion] = {}
        self._keys: dict[int, PublicKeys] = {}
        self._key_owner: dict[bytes, int] = {}
        self._share_keys: dict[int, ShareKeys] = {}
        self._sealed: dict[int, dict[int, bytes]] = {}  # sender → receiver → sealed shares
        self._advertised_to: dict[int, frozenset[int]] = {}  # who each client was told to share with
        self._bundled_to: dict[int, frozenset[int]] = {}  # whose shares each client received
        self._shared: frozenset[int] = frozenset()  # U2: received shares, and so are masked with
        self._masked_msgs: dict[int, MaskedInput] = {}
        self._masked: dict[int, NDArray[np.unsignedinteger]] = {}
        self._complaints: dict[int, frozenset[int]] = {}
        self._survivors: frozenset[int] = frozenset()
        self._dropped: frozenset[int] = frozenset()
        self._requests: dict[int, UnmaskRequest] = {}
        self._unmask_msgs: dict[int, UnmaskResponse] = {}
        self._unmask: dict[int, _Unmask] = {}

    @property
    def stage(self) -> Stage | None:
        """The stage accepting messages; None once the round has finished or aborted."""
        return self._stage

    @property
    def exclusions(self) -> Mapping[int, Exclusion]:
        """Clients that left the round so far, and why."""
        return dict(self._excluded)

    # --- stage 0 ---------------------------------------------------------------------------------------

    def receive_public_keys(self, client_id: int, message: PublicKeys) -> None:
        if not self._admit(Stage.ADVERTISE_KEYS, client_id, message.round_id, message, self._keys):
            return
        fresh = []
        for name, raw in (("encryption_key", message.encryption_key), ("masking_key", message.masking_key)):
            try:
                keys.load_public_key(raw)
            except keys.CryptoError as exc:
                self._reject(client_id, Stage.ADVERTISE_KEYS, f"{name}: {exc}")
            if raw in self._key_owner or raw in fresh:
                self._reject(client_id, Stage.ADVERTISE_KEYS, f"{name} is already in use in this round")
            fresh.append(raw)
        self._keys[client_id] = message
        for raw in fresh:
            self._key_owner[raw] = client_id

    def close_advertise_keys(self) -> dict[int, KeyBroadcast]:
        stage = Stage.ADVERTISE_KEYS
        self._close(stage, set(self._keys))
        live = self._prune(stage, self._live)
        self._require_survivors(stage, live)
        self._advertised_to = {u: self.config.neighbours(u) & live for u in live}
        self._open(Stage.SHARE_KEYS, live)
        return {
            u: KeyBroadcast(
                round_id=self.config.round_id,
                neighbours=tuple(
                    NeighbourKeys(v, self._keys[v].encryption_key, self._keys[v].masking_key)
                    for v in sorted(self._advertised_to[u])
                ),
            )
            for u in sorted(live)
        }

    # --- stage 1 ---------------------------------------------------------------------------------------

    def receive_share_keys(self, client_id: int, message: ShareKeys) -> None:
        stage = Stage.SHARE_KEYS
        if not self._admit(stage, client_id, message.round_id, message, self._share_keys):
            return
        if len(message.self_mask_commitment) != keys.COMMITMENT_BYTES:
            self._reject(client_id, stage, f"self_mask_commitment must be {keys.COMMITMENT_BYTES} bytes")
        receivers = [s.peer for s in message.shares]
        if len(set(receivers)) != len(receivers) or set(receivers) != self._advertised_to[client_id]:
            self._reject(client_id, stage, "shares must go exactly once to each neighbour in its key broadcast")
        if any(len(s.ciphertext) != SEALED_SHARE_BYTES for s in message.shares):
            self._reject(client_id, stage, f"each sealed share must be {SEALED_SHARE_BYTES} bytes")
        self._share_keys[client_id] = message
        self._sealed[client_id] = {s.peer: s.ciphertext for s in message.shares}

    def close_share_keys(self) -> dict[int, ShareBundle]:
        stage = Stage.SHARE_KEYS
        self._close(stage, set(self._share_keys))
        live = self._prune(stage, self._live)
        self._require_survivors(stage, live)
        self._bundled_to = {v: self.config.neighbours(v) & live for v in live}
        self._shared = live
        self._open(Stage.MASKED_INPUT, live)
        return {
            v: ShareBundle(
                round_id=self.config.round_id,
                shares=tuple(EncryptedShare(u, self._sealed[u][v]) for u in sorted(self._bundled_to[v])),
            )
            for v in sorted(live)
        }

    # --- stage 2 ---------------------------------------------------------------------------------------

    def receive_masked_input(self, client_id: int, message: MaskedInput) -> None:
        stage = Stage.MASKED_INPUT
        if not self._admit(stage, client_id, message.round_id, message, self._masked_msgs):
            return
        try:
            vector = ring.decode_words(message.masked, self.config.vector_length, self.config.modulus_bits)
        except ValueError as exc:
            self._reject(client_id, stage, f"masked: {exc}")
        complaints = message.complaints
        if len(set(complaints)) != len(complaints) or not set(complaints) <= self._bundled_to[client_id]:
            self._reject(client_id, stage, "complaints must name distinct senders of its share bundle")
        self._masked_msgs[client_id] = message
        self._masked[client_id] = vector
        self._complaints[client_id] = frozenset(complaints)

    def close_masked_input(self) -> dict[int, UnmaskRequest]:
        stage = Stage.MASKED_INPUT
        cfg = self.config
        shared = self._shared  # including those dropped since, whose masks the survivors still carry
        self._close(stage, set(self._masked))
        complained = {v for u in self._masked for v in self._complaints[u]}
        for v in sorted(complained & set(self._masked)):
            self._exclude(v, stage, ExclusionReason.COMPLAINED, "a neighbour could not open its sealed shares")
        survivors = frozenset(set(self._masked) - complained)
        dropped = shared - survivors
        self._require_survivors(stage, survivors)
        for u in sorted(shared):
            holders = self._share_holders(u, survivors)
            if (u in survivors or cfg.neighbours(u) & survivors) and len(holders) < cfg.threshold:
                kind = "self mask" if u in survivors else "masking key"
                self._abort(
                    stage,
                    f"only {len(holders)} live neighbours hold shares of client {u}'s {kind}, need {cfg.threshold}",
                )
        self._survivors, self._dropped = survivors, dropped
        for v in dropped:
            self._masked.pop(v, None)  # a complained-about client's input must never enter the sum
        self._requests = {
            w: UnmaskRequest(
                round_id=cfg.round_id,
                survivors=tuple(sorted(cfg.neighbours(w) & survivors)),
                dropped=tuple(sorted((cfg.neighbours(w) & dropped) - self._complaints[w])),
            )
            for w in sorted(survivors)
        }
        self._open(Stage.UNMASK, survivors)
        return dict(self._requests)

    # --- stage 3 ---------------------------------------------------------------------------------------

    def receive_unmask(self, client_id: int, message: UnmaskResponse) -> None:
        stage = Stage.UNMASK
        if not self._admit(stage, client_id, message.round_id, message, self._unmask_msgs):
            return
        request = self._requests[client_id]
        parsed = _Unmask()
        for kind, got, want, into in (
            ("self_mask_shares", message.self_mask_shares, request.survivors, parsed.self_mask),
            ("masking_key_shares", message.masking_key_shares, request.dropped, parsed.masking_key),
        ):
            if sorted(s.owner for s in got) != sorted(want):
                self._reject(client_id, stage, f"{kind} must hold exactly one share per client asked for")
            try:
                into.update(_parse(got))
            except FieldError as exc:
                self._reject(client_id, stage, f"{kind}: {exc}")
        self._unmask_msgs[client_id] = message
        self._unmask[client_id] = parsed

    def finalize(self) -> SecAggResult:
        """Close the unmasking stage, rebuild the secrets and return the unmasked sum."""
        stage = Stage.UNMASK
        cfg = self.config
        bits = cfg.modulus_bits
        self._close(stage, set(self._unmask), exclude=False)
        responders = set(self._unmask)
        false_shares: set[int] = set()
        total = np.zeros(cfg.vector_length, dtype=np.uint64)
        for u in sorted(self._survivors):
            np.add(total, self._masked[u], out=total)
        for u in sorted(self._survivors):
            seed = self._rebuild(
                u,
                "self mask",
                {w: self._unmask[w].self_mask[u] for w in responders if u in self._unmask[w].self_mask},
                self._commitment_check(u),
                false_shares,
            )
            masking.add_mask(total, seed, -1, bits)
        for v in sorted(self._dropped):
            peers = cfg.neighbours(v) & self._survivors
            if not peers:
                continue
            raw = self._rebuild(
                v,
                "masking key",
                {w: self._unmask[w].masking_key[v] for w in responders if v in self._unmask[w].masking_key},
                self._public_key_check(v),
                false_shares,
            )
            secret = keys.load_private_key(raw)
            for w in sorted(peers):
                # w added sign(w, v)·PRG(s_wv); subtract exactly that.
                seed = keys.mask_seed(
                    secret,
                    self._keys[w].masking_key,
                    session=cfg.session,
                    round_id=cfg.round_id,
                    own_id=v,
                    peer_id=w,
                )
                masking.add_mask(total, seed, -masking.pairwise_sign(w, v), bits)
        ring.reduce(total, bits)
        self._stage = None
        return SecAggResult(
            total=total,
            included=self._survivors,
            excluded=dict(self._excluded),
            silent_in_unmask=frozenset(self._survivors - responders),
            false_shares=frozenset(false_shares),
            modulus_bits=bits,
        )

    # --- helpers ---------------------------------------------------------------------------------------

    def _admit(self, stage: Stage, client_id: int, round_id: int, message: object, store: Mapping[int, object]) -> bool:
        """Whether to process ``message``: False for an exact retransmission; raises if it cannot be taken."""
        if self._aborted is not None:
            raise self._aborted
        if self._stage is not stage:
            now = "none (round over)" if self._stage is None else self._stage.name
            raise ClientRejected(client_id, stage, f"stage is not open (open: {now})", dropped=False)
        if not 0 <= client_id < self.config.num_clients:
            raise ClientRejected(client_id, stage, "no such client in this round", dropped=False)
        if round_id != self.config.round_id:
            reason = f"message for round {round_id}, this is round {self.config.round_id}"
            raise ClientRejected(client_id, stage, reason, dropped=False)
        if client_id in store:
            if store[client_id] == message:
                return False
            raise ClientRejected(client_id, stage, "conflicts with the message it already sent", dropped=False)
        if client_id not in self._live:
            gone = self._excluded.get(client_id)
            why = f" (left at {gone.stage.name}: {gone.reason})" if gone else ""
            raise ClientRejected(client_id, stage, f"not taking part in this stage{why}", dropped=False)
        return True

    def _reject(self, client_id: int, stage: Stage, detail: str) -> NoReturn:
        if stage is Stage.UNMASK:
            self._live = self._live - {client_id}  # its input stays in; only its shares are ignored
        else:
            self._exclude(client_id, stage, ExclusionReason.MALFORMED, detail)
        raise ClientRejected(client_id, stage, detail, dropped=True)

    def _exclude(self, client_id: int, stage: Stage, reason: ExclusionReason, detail: str = "") -> None:
        self._excluded[client_id] = Exclusion(stage, reason, detail)
        self._live = self._live - {client_id}

    def _close(self, stage: Stage, arrived: set[int], *, exclude: bool = True) -> None:
        if self._aborted is not None:
            raise self._aborted
        if self._stage is not stage:
            now = "none (round over)" if self._stage is None else self._stage.name
            raise ProtocolStateError(f"cannot close {stage.name}: open stage is {now}")
        if exclude:
            for u in sorted(self._live - arrived):
                self._exclude(u, stage, ExclusionReason.SILENT)
        self._stage = None  # nothing is accepted until the next stage opens

    def _open(self, stage: Stage, live: frozenset[int]) -> None:
        self._stage = stage
        self._live = live

    def _prune(self, stage: Stage, candidates: frozenset[int]) -> frozenset[int]:
        """Drop, until none is left, clients with fewer than t live neighbours to hold their shares.

        Safe before stage 2 only: nobody has masked with them yet, so dropping them costs nothing. Each
        removal takes a holder from its neighbours, so removals propagate (a worklist keeps it O(n·k)).
        """
        cfg = self.config
        live = set(candidates)
        count = {u: len(cfg.neighbours(u) & live) for u in live}
        pending = sorted(u for u in live if count[u] < cfg.threshold)
        while pending:
            u = pending.pop()
            if u not in live:
                continue
            live.discard(u)
            self._exclude(u, stage, ExclusionReason.ISOLATED, f"{count[u]} live neighbours, need {cfg.threshold}")
            for v in cfg.neighbours(u) & live:
                count[v] -= 1
                if count[v] == cfg.threshold - 1:  # just fell below: enqueue once
                    pending.append(v)
        return frozenset(live)

    def _require_survivors(self, stage: Stage, live: frozenset[int]) -> None:
        if len(live) < self.config.min_survivors:
            self._abort(stage, f"only {len(live)} clients remain, need {self.config.min_survivors}")

    def _share_holders(self, owner: int, survivors: frozenset[int]) -> set[int]:
        """Survivors holding an opened share of ``owner``'s secrets."""
        return {w for w in self.config.neighbours(owner) & survivors if owner not in self._complaints[w]}

    def _abort(self, stage: Stage, reason: str) -> NoReturn:
        self._aborted = SecAggAborted(stage, reason)
        self._stage = None
        raise self._aborted

    def _commitment_check(self, owner: int) -> Callable[[bytes], bool]:
        cfg = self.config
        expected = self._share_keys[owner].self_mask_commitment

        def check(seed: bytes) -> bool:
            got = keys.self_mask_commitment(seed, session=cfg.session, round_id=cfg.round_id, client_id=owner)
            return got == expected

        return check

    def _public_key_check(self, owner: int) -> Callable[[bytes], bool]:
        expected = self._keys[owner].masking_key

        def check(raw: bytes) -> bool:
            return keys.public_bytes(keys.load_private_key(raw)) == expected

        return check

    def _rebuild(
        self,
        owner: int,
        kind: str,
        ys: dict[int, int],
        verify: Callable[[bytes], bool],
        false_shares: set[int],
    ) -> bytes:
        """Reconstruct a secret from revealed shares and check it against what its owner published.

        The first t shares almost always do; if some share was false, random t-subsets are tried (a few
        false shares among spare ones are survived), and shares off the recovered polynomial are reported.
        """
        t = self.config.threshold
        if len(ys) < t:
            self._abort(Stage.UNMASK, f"only {len(ys)} shares of client {owner}'s {kind} were revealed, need {t}")
        shares = [Share(share_x(w), y) for w, y in sorted(ys.items())]
        rng = random.SystemRandom()
        for attempt in range(_RECONSTRUCTION_ATTEMPTS if len(shares) > t else 1):
            subset = shares[:t] if attempt == 0 else rng.sample(shares, t)
            try:
                secret = reconstruct_secret(subset, t, SECRET_BYTES, field=FIELD)
            except ShamirError:
                continue
            if not verify(secret):
                continue
            if attempt:
                points = [(s.x, s.y) for s in subset]
                false_shares.update(s.x - 1 for s in shares if FIELD.interpolate(points, at=s.x) != s.y)
            return secret
        self._abort(Stage.UNMASK, f"revealed shares of client {owner}'s {kind} are inconsistent with its keys")


def _parse(shares: tuple[RevealedShare, ...]) -> dict[int, int]:
    return {s.owner: FIELD.decode(s.share) for s in shares}

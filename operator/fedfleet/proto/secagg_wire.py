"""Secure-aggregation messages between their protocol dataclasses and fedfleet.v1 protobufs, both ways.

The dataclasses (fedfleet.privacy.secagg.messages) carry a ``round_id``; on the wire it is the job's round
number. Who sent a message is never in it: the server knows the device from its token.
"""

from __future__ import annotations

from fedfleet.privacy.secagg import (
    EncryptedShare,
    KeyBroadcast,
    NeighbourKeys,
    PublicKeys,
    RevealedShare,
    SecAggConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedfleet.privacy.secure_update import UpdateEncoding
from fedfleet.proto.v1 import aggregator_pb2 as pb


def public_keys_to_proto(message: PublicKeys) -> pb.AdvertiseKeysRequest:
    return pb.AdvertiseKeysRequest(
        round=message.round_id,
        keys=pb.SecAggPublicKeys(encryption_key=message.encryption_key, masking_key=message.masking_key),
    )


def public_keys_from_proto(message: pb.AdvertiseKeysRequest) -> PublicKeys:
    return PublicKeys(message.round, message.keys.encryption_key, message.keys.masking_key)


def broadcast_to_proto(message: KeyBroadcast) -> pb.KeyBroadcast:
    return pb.KeyBroadcast(
        round=message.round_id,
        neighbours=[
            pb.NeighbourKeys(
                client_id=n.client_id,
                keys=pb.SecAggPublicKeys(encryption_key=n.encryption_key, masking_key=n.masking_key),
            )
            for n in message.neighbours
        ],
    )


def broadcast_from_proto(message: pb.KeyBroadcast) -> KeyBroadcast:
    return KeyBroadcast(
        message.round,
        tuple(NeighbourKeys(n.client_id, n.keys.encryption_key, n.keys.masking_key) for n in message.neighbours),
    )


def _shares_to_proto(shares: tuple[EncryptedShare, ...]) -> list[pb.SealedShare]:
    return [pb.SealedShare(peer=s.peer, ciphertext=s.ciphertext) for s in shares]


def _shares_from_proto(shares: object) -> tuple[EncryptedShare, ...]:
    return tuple(EncryptedShare(s.peer, s.ciphertext) for s in shares)  # type: ignore[attr-defined]


def share_keys_to_proto(message: ShareKeys) -> pb.ShareKeysRequest:
    return pb.ShareKeysRequest(
        round=message.round_id,
        self_mask_commitment=message.self_mask_commitment,
        shares=_shares_to_proto(message.shares),
    )


def share_keys_from_proto(message: pb.ShareKeysRequest) -> ShareKeys:
    return ShareKeys(message.round, message.self_mask_commitment, _shares_from_proto(message.shares))


def bundle_to_proto(message: ShareBundle) -> pb.ShareBundle:
    return pb.ShareBundle(round=message.round_id, shares=_shares_to_proto(message.shares))


def bundle_from_proto(message: pb.ShareBundle) -> ShareBundle:
    return ShareBundle(message.round, _shares_from_proto(message.shares))


def unmask_request_to_proto(message: UnmaskRequest) -> pb.UnmaskRequest:
    return pb.UnmaskRequest(round=message.round_id, survivors=message.survivors, dropped=message.dropped)


def unmask_request_from_proto(message: pb.UnmaskRequest) -> UnmaskRequest:
    return UnmaskRequest(message.round, tuple(message.survivors), tuple(message.dropped))


def _revealed_to_proto(shares: tuple[RevealedShare, ...]) -> list[pb.RevealedShare]:
    return [pb.RevealedShare(owner=s.owner, share=s.share) for s in shares]


def _revealed_from_proto(shares: object) -> tuple[RevealedShare, ...]:
    return tuple(RevealedShare(s.owner, s.share) for s in shares)  # type: ignore[attr-defined]


def unmask_response_to_proto(message: UnmaskResponse) -> pb.UnmaskResponse:
    return pb.UnmaskResponse(
        round=message.round_id,
        self_mask_shares=_revealed_to_proto(message.self_mask_shares),
        masking_key_shares=_revealed_to_proto(message.masking_key_shares),
    )


def unmask_response_from_proto(message: pb.UnmaskResponse) -> UnmaskResponse:
    return UnmaskResponse(
        message.round,
        _revealed_from_proto(message.self_mask_shares),
        _revealed_from_proto(message.masking_key_shares),
    )


def task_to_proto(
    config: SecAggConfig, client_id: int, encoding: UpdateEncoding, key_stage_seconds: float
) -> pb.SecureAggregationTask:
    return pb.SecureAggregationTask(
        client_id=client_id,
        session=config.session,
        num_clients=config.num_clients,
        vector_length=config.vector_length,
        degree=config.degree,
        threshold=config.threshold,
        min_survivors=config.min_survivors,
        modulus_bits=config.modulus_bits,
        encoding=pb.UpdateEncoding(
            clip_range=encoding.clip_range,
            quantization_bits=encoding.quantization_bits,
            max_clients=encoding.max_clients,
            l2_clip=encoding.l2_clip,
            weight_cap=encoding.weight_cap,
            noise_sigma_grid=encoding.noise_sigma_grid,
            noise_shares=encoding.noise_shares,
        ),
        key_stage_seconds=key_stage_seconds,
    )


def task_from_proto(round_number: int, message: pb.SecureAggregationTask) -> tuple[SecAggConfig, UpdateEncoding]:
    """The round's parameters as the device rebuilds them. Raises ValueError for inconsistent ones."""
    config = SecAggConfig(
        round_id=round_number,
        session=message.session,
        num_clients=message.num_clients,
        vector_length=message.vector_length,
        degree=message.degree,
        threshold=message.threshold,
        min_survivors=message.min_survivors,
        modulus_bits=message.modulus_bits,
    )
    e = message.encoding
    encoding = UpdateEncoding(
        clip_range=e.clip_range,
        quantization_bits=e.quantization_bits,
        max_clients=e.max_clients,
        modulus_bits=message.modulus_bits,
        l2_clip=e.l2_clip,
        weight_cap=e.weight_cap,
        noise_sigma_grid=e.noise_sigma_grid,
        noise_shares=max(1, e.noise_shares),
    )
    return config, encoding

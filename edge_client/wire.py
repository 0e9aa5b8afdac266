"""Conversions between the wire (``fedadamw.v1``) and ``secure_agg``'s messages, agent side.

The coordinator has its own conversions: agent and coordinator meet only on the wire.
"""

from __future__ import annotations

from secure_agg import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeysBroadcast,
    ServerMessage,
    ShareKeys,
    SharesDelivery,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from wire.v1 import edge_pb2 as pb

__all__ = [
    "advertise_to_proto",
    "event_message",
    "shares_to_proto",
    "signature_to_proto",
    "unmask_to_proto",
]


def event_message(event: pb.RoundEvent) -> ServerMessage | None:
    """The secure-aggregation message a round event carries, if any."""
    kind = event.WhichOneof("event")
    if kind == "keys":
        return KeysBroadcast(
            round_id=event.round_id,
            keys=tuple(
                AdvertiseKeys(
                    round_id=event.round_id,
                    client_id=k.secagg_id,
                    identity_key=bytes(k.identity_key),
                    encryption_key=bytes(k.encryption_key),
                    masking_key=bytes(k.masking_key),
                    self_mask_commitment=bytes(k.self_mask_commitment),
                    signature=bytes(k.signature),
                )
                for k in event.keys.keys
            ),
        )
    if kind == "shares":
        session_id = bytes(event.shares.session_id)
        return SharesDelivery(
            session_id=session_id,
            shares=tuple(
                EncryptedShare(
                    session_id=session_id,
                    sender=s.sender,
                    recipient=s.recipient,
                    ciphertext=bytes(s.ciphertext),
                )
                for s in event.shares.shares
            ),
            dead=tuple(event.shares.dead),
        )
    if kind == "consistency":
        return ConsistencyRequest(
            session_id=bytes(event.consistency.session_id),
            alive=tuple(event.consistency.alive),
            dead=tuple(event.consistency.dead),
        )
    if kind == "unmask":
        return UnmaskRequest(
            session_id=bytes(event.unmask.session_id),
            signatures=tuple(
                SurvivorSignature(client_id=s.secagg_id, signature=bytes(s.signature))
                for s in event.unmask.signatures
            ),
        )
    return None


def advertise_to_proto(message: AdvertiseKeys) -> pb.AdvertiseKeysRequest:
    return pb.AdvertiseKeysRequest(
        round_id=message.round_id,
        phase=pb.PHASE_ADVERTISE_KEYS,
        encryption_key=message.encryption_key,
        masking_key=message.masking_key,
        signature=message.signature,
        self_mask_commitment=message.self_mask_commitment,
    )


def shares_to_proto(message: ShareKeys, round_id: str) -> pb.ShareKeysRequest:
    return pb.ShareKeysRequest(
        round_id=round_id,
        phase=pb.PHASE_SHARE_KEYS,
        session_id=message.session_id,
        shares=[
            pb.EncryptedShare(sender=s.sender, recipient=s.recipient, ciphertext=s.ciphertext)
            for s in message.shares
        ],
    )


def signature_to_proto(
    message: ConsistencySignature, round_id: str
) -> pb.ConsistencySignatureRequest:
    return pb.ConsistencySignatureRequest(
        round_id=round_id,
        phase=pb.PHASE_CONSISTENCY_CHECK,
        session_id=message.session_id,
        signature=message.signature,
    )


def unmask_to_proto(message: UnmaskResponse, round_id: str) -> pb.UnmaskRequest:
    return pb.UnmaskRequest(
        round_id=round_id,
        phase=pb.PHASE_UNMASKING,
        session_id=message.session_id,
        self_mask_shares=[
            pb.RevealedShare(owner=s.owner, share=s.share) for s in message.self_mask_shares
        ],
        key_shares=[pb.RevealedShare(owner=s.owner, share=s.share) for s in message.key_shares],
    )

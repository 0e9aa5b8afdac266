"""The messages in and out of the state machines: plain frozen dataclasses.

One class per phase and direction; the coordinator maps each to a protobuf message and
back. Client ids are positive integers below ``2**63`` that the coordinator assigns per
round (they double as Shamir x-coordinates). Keys, signatures and ciphertexts are raw
``bytes``; masked vectors are 1-D ``uint32``/``uint64`` numpy arrays.

* phase 0, AdvertiseKeys: :class:`AdvertiseKeys` in, :class:`KeysBroadcast` out;
* phase 1, ShareKeys: :class:`ShareKeys` in, :class:`SharesDelivery` out;
* phase 2, MaskedInput: :class:`MaskedInput` or :class:`MaskedInputChunk` in,
  :class:`ConsistencyRequest` out;
* phase 3, ConsistencyCheck: :class:`ConsistencySignature` in, :class:`UnmaskRequest` out;
* phase 4, Unmasking: :class:`UnmaskResponse` in; the server then finishes;
* any phase: :class:`ClientAbort` in, :class:`RoundAborted` out.

("In" is client to server, "out" server to client; each "out" message opens the next
phase.)

The array-carrying messages compare by identity (``eq=False``): compare their arrays with
``numpy.array_equal``. A message does not own its array; receivers copy what they keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from secure_agg.reasons import AbortReason

__all__ = [
    "AdvertiseKeys",
    "ClientAbort",
    "ClientMessage",
    "ConsistencyRequest",
    "ConsistencySignature",
    "EncryptedShare",
    "KeysBroadcast",
    "MaskedInput",
    "MaskedInputChunk",
    "RevealedShare",
    "RoundAborted",
    "ServerMessage",
    "ShareKeys",
    "SharesDelivery",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
]


@dataclasses.dataclass(frozen=True)
class AdvertiseKeys:
    """Phase 0, client -> server: two fresh X25519 public keys and a commitment to the
    self-mask secret ``b`` (:func:`secure_agg.session.commit_self_mask`, 32 bytes), signed by
    the identity key.

    ``signature`` is Ed25519 over :func:`secure_agg.signing.advertise_payload`. The server
    checks the ``b`` it rebuilds at unmasking against ``self_mask_commitment``, and the
    masking key it rebuilds against ``masking_key``, so a forged share is caught.
    """

    round_id: str
    client_id: int
    identity_key: bytes
    encryption_key: bytes
    masking_key: bytes
    self_mask_commitment: bytes
    signature: bytes


@dataclasses.dataclass(frozen=True)
class KeysBroadcast:
    """Phase 0 -> 1, server -> every client in U1: all advertised keys, sorted by id."""

    round_id: str
    keys: tuple[AdvertiseKeys, ...]


@dataclasses.dataclass(frozen=True)
class EncryptedShare:
    """A sender's Shamir shares of its b and s_sk for one recipient, AES-GCM sealed.

    ``ciphertext`` is ``nonce || AES-GCM(sender id, recipient id, b-share, s-share)``; the
    associated data binds ``session_id``, ``sender`` and ``recipient``.
    """

    session_id: bytes
    sender: int
    recipient: int
    ciphertext: bytes


@dataclasses.dataclass(frozen=True)
class ShareKeys:
    """Phase 1, client -> server: one :class:`EncryptedShare` per neighbour."""

    session_id: bytes
    client_id: int
    shares: tuple[EncryptedShare, ...]


@dataclasses.dataclass(frozen=True)
class SharesDelivery:
    """Phase 1 -> 2, server -> each client in U2: the shares its neighbours sent it.

    ``dead`` lists neighbours that advertised keys but sent no shares (U1 minus U2).
    """

    session_id: bytes
    shares: tuple[EncryptedShare, ...]
    dead: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedInput:
    """Phase 2, client -> server: the whole masked vector ``y`` (1-D, ring dtype)."""

    session_id: bytes
    client_id: int
    values: np.ndarray

    def chunks(self, chunk_length: int) -> Iterator[MaskedInputChunk]:
        """Split into :class:`MaskedInputChunk` slices of at most ``chunk_length`` elements."""
        for offset in range(0, self.values.shape[0], chunk_length):
            yield MaskedInputChunk(
                session_id=self.session_id,
                client_id=self.client_id,
                offset=offset,
                values=self.values[offset : offset + chunk_length],
            )


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedInputChunk:
    """Phase 2, client -> server: elements ``[offset, offset + len(values))`` of ``y``."""

    session_id: bytes
    client_id: int
    offset: int
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class ConsistencyRequest:
    """Phase 2 -> 3, server -> each client in U3: survivors ``alive`` (U3), ``dead`` (U2 - U3)."""

    session_id: bytes
    alive: tuple[int, ...]
    dead: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ConsistencySignature:
    """Phase 3, client -> server: Ed25519 over :func:`secure_agg.signing.consistency_payload`."""

    session_id: bytes
    client_id: int
    signature: bytes


@dataclasses.dataclass(frozen=True)
class SurvivorSignature:
    """One client's signature over the survivor set, forwarded by the server."""

    client_id: int
    signature: bytes


@dataclasses.dataclass(frozen=True)
class UnmaskRequest:
    """Phase 3 -> 4, server -> each client in U4: its neighbours' survivor-set signatures."""

    session_id: bytes
    signatures: tuple[SurvivorSignature, ...]


@dataclasses.dataclass(frozen=True)
class RevealedShare:
    """One Shamir share (32-byte field element) of ``owner``'s secret."""

    owner: int
    share: bytes


@dataclasses.dataclass(frozen=True)
class UnmaskResponse:
    """Phase 4, client -> server: b-shares of surviving and s_sk-shares of dropped neighbours.

    No owner appears in both tuples.
    """

    session_id: bytes
    client_id: int
    self_mask_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]


@dataclasses.dataclass(frozen=True)
class ClientAbort:
    """Any phase, client -> server: the client gives up on the round, and why."""

    round_id: str
    client_id: int
    reason: AbortReason


@dataclasses.dataclass(frozen=True)
class RoundAborted:
    """Any phase, server -> clients: the round is over without a sum, and why."""

    round_id: str
    reason: AbortReason


ClientMessage = (
    AdvertiseKeys
    | ShareKeys
    | MaskedInput
    | MaskedInputChunk
    | ConsistencySignature
    | UnmaskResponse
    | ClientAbort
)
"""Everything a client sends."""

ServerMessage = KeysBroadcast | SharesDelivery | ConsistencyRequest | UnmaskRequest | RoundAborted
"""Everything the server sends."""

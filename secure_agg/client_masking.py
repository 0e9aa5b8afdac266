"""The client's phases 2 to 4: mask the input, sign the survivor set, reveal shares once.

:class:`ClientMaskedInput` is what :class:`~secure_agg.client.ClientShareKeys` moves to once
its neighbours' shares are opened; from there the client masks its vector, checks and signs
the survivor set the server announces, and answers one unmask request, revealing for each
neighbour the b-share if it is listed alive or the s_sk-share if it is listed dead, never
both. The protocol, the aborts and what each state holds: :mod:`secure_agg.client`.
"""

from __future__ import annotations

import numpy as np

from secure_agg import shamir, signing
from secure_agg.client_base import (
    AbortError,
    ClientIdentity,
    ClientState,
    ClientStep,
    check_ids,
)
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    RevealedShare,
    ServerMessage,
    UnmaskRequest,
    UnmaskResponse,
)
from secure_agg.prg import add_masks
from secure_agg.reasons import AbortReason, Phase
from secure_agg.session import Session
from secure_agg.share_box import OpenedShare

__all__ = [
    "ClientCompleted",
    "ClientConsistencyCheck",
    "ClientMaskedInput",
    "ClientUnmasking",
]


class ClientMaskedInput(ClientState):
    """Phase 2: shares received; waits for the local vector via :meth:`mask`."""

    phase = Phase.MASKED_INPUT

    def __init__(
        self,
        identity: ClientIdentity,
        session: Session,
        self_seed: bytes,
        mask_seeds: dict[int, bytes],
        received: dict[int, OpenedShare],
        known_dead: frozenset[int],
    ) -> None:
        super().__init__(identity)
        self._session = session
        self._self_seed = self_seed
        self._mask_seeds = mask_seeds
        self._received = received
        self._known_dead = known_dead

    @property
    def session_id(self) -> bytes:
        return self._session.session_id

    def mask(self, encoded: np.ndarray) -> ClientStep:
        """Mask the quantized vector and move on to the consistency check.

        ``encoded`` is the output of :func:`~secure_agg.quantize.encode` for this round's
        layout: 1-D, ``layout.length`` elements, the layout's ring dtype. It is not
        modified. Returns a :class:`MaskedInput` whose array the caller owns:
        ``y = encoded + PRG(b) + sum(+-PRG(pair seed))`` modulo the ring, ``+`` towards
        neighbours with a larger id.
        """
        layout = self._session.config.params.layout
        if encoded.dtype != layout.dtype or encoded.shape != (layout.length,):
            raise SecAggError(
                ErrorCode.INVALID_INPUT,
                f"mask() wants {layout.dtype} of shape ({layout.length},), "
                f"got {encoded.dtype} {encoded.shape}",
            )
        own_id = self._identity.client_id
        masked = np.array(encoded, dtype=layout.dtype, order="C", copy=True)
        add = [self._self_seed]
        add += [seed for peer, seed in self._mask_seeds.items() if peer > own_id]
        subtract = [seed for peer, seed in self._mask_seeds.items() if peer < own_id]
        add_masks(masked, add=add, subtract=subtract)
        message = MaskedInput(session_id=self.session_id, client_id=own_id, values=masked)
        state = ClientConsistencyCheck(
            self._identity, self._session, self._received, self._known_dead
        )
        return ClientStep(state, message)


class ClientConsistencyCheck(ClientState):
    """Phase 2 done: input sent; waits for :class:`ConsistencyRequest`."""

    phase = Phase.CONSISTENCY_CHECK
    expects = (ConsistencyRequest,)

    def __init__(
        self,
        identity: ClientIdentity,
        session: Session,
        received: dict[int, OpenedShare],
        known_dead: frozenset[int],
    ) -> None:
        super().__init__(identity)
        self._session = session
        self._received = received
        self._known_dead = known_dead

    def _handle(self, message: ServerMessage) -> ClientStep:
        assert isinstance(message, ConsistencyRequest)
        session = self._session
        own_id = self._identity.client_id
        if message.session_id != session.session_id:
            raise AbortError(AbortReason.SESSION_MISMATCH)
        alive = frozenset(message.alive)
        dead = frozenset(message.dead)
        check_ids(session, alive | dead)
        if alive & dead:
            raise AbortError(AbortReason.ALIVE_DEAD_OVERLAP)
        if own_id in dead:
            raise AbortError(AbortReason.SELF_LISTED_DEAD)
        if own_id not in alive:
            raise AbortError(AbortReason.SELF_NOT_LISTED_ALIVE)
        if alive & self._known_dead:
            raise AbortError(AbortReason.DEAD_CLIENT_REVIVED)
        if len(alive & session.neighbours(own_id)) < session.threshold:
            raise AbortError(AbortReason.TOO_FEW_NEIGHBOURS)
        payload = signing.consistency_payload(session_id=session.session_id, survivors=alive)
        signature = signing.sign(self._identity.identity_key, payload)
        outgoing = ConsistencySignature(
            session_id=session.session_id, client_id=own_id, signature=signature
        )
        state = ClientUnmasking(
            self._identity, session, self._received, alive, dead | self._known_dead
        )
        return ClientStep(state, outgoing)


class ClientUnmasking(ClientState):
    """Phase 3 done: survivor set signed; waits for :class:`UnmaskRequest`."""

    phase = Phase.UNMASKING
    expects = (UnmaskRequest,)

    def __init__(
        self,
        identity: ClientIdentity,
        session: Session,
        received: dict[int, OpenedShare],
        alive: frozenset[int],
        dead: frozenset[int],
    ) -> None:
        super().__init__(identity)
        self._session = session
        self._received = received
        self._alive = alive
        self._dead = dead

    def _handle(self, message: ServerMessage) -> ClientStep:
        assert isinstance(message, UnmaskRequest)
        session = self._session
        own_id = self._identity.client_id
        if message.session_id != session.session_id:
            raise AbortError(AbortReason.SESSION_MISMATCH)
        payload = signing.consistency_payload(session_id=session.session_id, survivors=self._alive)
        signers = set()
        for item in message.signatures:
            check_ids(session, [item.client_id])
            if item.client_id not in self._alive:
                raise AbortError(AbortReason.DEAD_CLIENT_REVIVED)
            try:
                signing.verify(session.by_id[item.client_id].identity_key, item.signature, payload)
            except SecAggError as exc:
                raise AbortError(AbortReason.BAD_SIGNATURE) from exc
            signers.add(item.client_id)
        if len(signers & session.neighbours(own_id)) < session.threshold:
            raise AbortError(AbortReason.TOO_FEW_SIGNATURES)
        self_mask_shares = []
        key_shares = []
        for owner in sorted(self._received):
            value = self._received[owner]
            # alive and dead were checked disjoint in phase 3: at most one branch runs.
            if owner in self._alive:
                self_mask_shares.append(
                    RevealedShare(owner, shamir.encode_share(value.self_mask_share))
                )
            elif owner in self._dead:
                key_shares.append(RevealedShare(owner, shamir.encode_share(value.key_share)))
        outgoing = UnmaskResponse(
            session_id=session.session_id,
            client_id=own_id,
            self_mask_shares=tuple(self_mask_shares),
            key_shares=tuple(key_shares),
        )
        return ClientStep(ClientCompleted(self._identity, session.session_id), outgoing)


class ClientCompleted(ClientState):
    """Phase 4 done: shares revealed once. A second request aborts."""

    phase = Phase.COMPLETED
    expects = (UnmaskRequest,)

    def __init__(self, identity: ClientIdentity, session_id: bytes) -> None:
        super().__init__(identity)
        self.session_id = session_id

    def _handle(self, message: ServerMessage) -> ClientStep:
        raise AbortError(AbortReason.SECOND_UNMASK_REQUEST)

"""The server's phases 2 to 4: sum the masked inputs, collect signatures, remove the masks.

:class:`ServerMaskedInput` is what :class:`~secure_agg.server.ServerShareKeys` closes into.
It adds each masked input (whole or in chunks) into one running sum as it arrives;
:class:`ServerConsistencyCheck` collects the survivors' signatures over U3;
:class:`ServerUnmasking` collects the revealed shares and, on closing, rebuilds the secrets
(:mod:`secure_agg.unmasking`) and takes the masks off the sum. The contracts the
coordinator relies on: :mod:`secure_agg.server`.
"""

from __future__ import annotations

import numpy as np

from secure_agg import shamir, signing
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import (
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    MaskedInputChunk,
    SharesDelivery,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secure_agg.prg import add_masks
from secure_agg.reasons import AbortReason, Phase, ReceiveOutcome
from secure_agg.server_base import (
    ServerCompleted,
    ServerStep,
    SessionPhase,
    invalid_message,
)
from secure_agg.server_state import (
    AggregateResult,
    ChunkReceipt,
    ConsistencyCheckData,
    Dropout,
    MaskedInputData,
    UnmaskingData,
    chunk_digest,
)
from secure_agg.unmasking import Recovery, removal_seeds

__all__ = ["ServerConsistencyCheck", "ServerMaskedInput", "ServerUnmasking"]


class ServerMaskedInput(SessionPhase):
    """Phase 2: add masked inputs (whole or in chunks) into the running sum."""

    phase = Phase.MASKED_INPUT
    expects = (MaskedInput, MaskedInputChunk)

    def __init__(self, data: MaskedInputData) -> None:
        self.data = data
        self._session = data.session
        self._inbox: dict[int, list[EncryptedShare]] | None = None

    @property
    def dropouts(self) -> dict[int, Dropout]:
        return self.data.dropouts

    @property
    def participants(self) -> frozenset[int]:
        return self.data.u2

    @property
    def responded(self) -> frozenset[int]:
        return frozenset(self.data.complete)

    def message_for(self, client_id: int) -> SharesDelivery:
        """The shares the client's neighbours in U2 sent it, and its dead neighbours."""
        self._sender(client_id)
        if self._inbox is None:
            inbox: dict[int, list[EncryptedShare]] = {client: [] for client in self.data.u2}
            for sender in sorted(self.data.u2):
                for share in self.data.shares[sender].shares:
                    if share.recipient in inbox:
                        inbox[share.recipient].append(share)
            self._inbox = inbox
        neighbours = self._session.neighbours(client_id)
        dead = sorted(neighbours - self.data.u2)
        return SharesDelivery(
            session_id=self.session_id,
            shares=tuple(self._inbox.get(client_id, ())),
            dead=tuple(dead),
        )

    def _forget(self, client_id: int) -> None:
        # Chunks already summed cannot be taken back; close() decides what that means.
        return None

    def _receive(self, message: ClientMessage) -> ReceiveOutcome:
        assert isinstance(message, MaskedInput | MaskedInputChunk)
        data = self.data
        client = message.client_id
        self._check_session(message.session_id)
        self._sender(client)
        offset = message.offset if isinstance(message, MaskedInputChunk) else 0
        values = message.values
        total = data.running_sum.shape[0]
        if isinstance(message, MaskedInput) and values.shape != (total,):
            raise invalid_message(f"a masked input has {total} elements, got shape {values.shape}")
        if values.dtype != data.running_sum.dtype or values.ndim != 1 or values.shape[0] < 1:
            raise invalid_message(
                f"masked values must be non-empty 1-D {data.running_sum.dtype}, "
                f"got {values.dtype} {values.shape}"
            )
        length = values.shape[0]
        if offset < 0 or offset + length > total:
            raise invalid_message(f"chunk [{offset}, {offset + length}) outside [0, {total})")
        received = data.chunks.setdefault(client, {})
        digest = chunk_digest(values)
        known = received.get(offset)
        if known is not None and known.length == length:
            if known.digest == digest:
                return ReceiveOutcome.DUPLICATE
            raise SecAggError(
                ErrorCode.CONFLICTING_MESSAGE,
                f"client {client}: chunk at offset {offset} was received with other values",
            )
        for start, receipt in received.items():
            size = receipt.length
            if start < offset + length and offset < start + size:
                raise SecAggError(
                    ErrorCode.CONFLICTING_MESSAGE,
                    f"client {client}: chunk [{offset}, {offset + length}) overlaps "
                    f"[{start}, {start + size})",
                )
        window = data.running_sum[offset : offset + length]
        np.add(window, values, out=window)
        received[offset] = ChunkReceipt(length=length, digest=digest)
        if sum(receipt.length for receipt in received.values()) == total:
            data.complete.add(client)
            return ReceiveOutcome.INPUT_COMPLETE
        return ReceiveOutcome.ACCEPTED

    def close(self) -> ServerStep:
        data = self.data
        partial = {client for client in data.chunks if client not in data.complete}
        if partial:
            return self._abort_with(AbortReason.INCOMPLETE_MASKED_INPUT, self.alive)
        u3 = frozenset(data.complete)
        self._record_silent(u3)
        if len(u3) - 1 < self._session.threshold:
            return self._abort_with(AbortReason.TOO_FEW_CLIENTS, u3 - data.dropouts.keys())
        state = ServerConsistencyCheck(
            ConsistencyCheckData(
                session=self._session,
                u2=data.u2,
                u3=u3,
                running_sum=data.running_sum,
                dropouts=data.dropouts,
            )
        )
        return ServerStep(state, {client: state.message_for(client) for client in state.alive})


class ServerConsistencyCheck(SessionPhase):
    """Phase 3: collect signatures over the survivor set U3."""

    phase = Phase.CONSISTENCY_CHECK
    expects = (ConsistencySignature,)

    def __init__(self, data: ConsistencyCheckData) -> None:
        self.data = data
        self._session = data.session

    @property
    def dropouts(self) -> dict[int, Dropout]:
        return self.data.dropouts

    @property
    def participants(self) -> frozenset[int]:
        return self.data.u3

    @property
    def responded(self) -> frozenset[int]:
        return frozenset(self.data.signatures)

    def message_for(self, client_id: int) -> ConsistencyRequest:
        """The survivor set U3 and the dropped set U2 - U3 (the same for every client)."""
        self._sender(client_id)
        return ConsistencyRequest(
            session_id=self.session_id,
            alive=tuple(sorted(self.data.u3)),
            dead=tuple(sorted(self.data.u2 - self.data.u3)),
        )

    def _forget(self, client_id: int) -> None:
        self.data.signatures.pop(client_id, None)

    def _receive(self, message: ClientMessage) -> ReceiveOutcome:
        assert isinstance(message, ConsistencySignature)
        client = message.client_id
        self._check_session(message.session_id)
        self._sender(client)
        if self._check_duplicate(self.data.signatures.get(client), message.signature, client):
            return ReceiveOutcome.DUPLICATE
        payload = signing.consistency_payload(session_id=self.session_id, survivors=self.data.u3)
        signing.verify(self._session.by_id[client].identity_key, message.signature, payload)
        self.data.signatures[client] = message.signature
        return ReceiveOutcome.ACCEPTED

    def close(self) -> ServerStep:
        data = self.data
        self._record_silent(self.responded)
        u4 = frozenset(data.signatures) - data.dropouts.keys()
        if len(u4) - 1 < self._session.threshold:
            return self._abort_with(AbortReason.TOO_FEW_CLIENTS, u4)
        state = ServerUnmasking(
            UnmaskingData(
                session=self._session,
                u2=data.u2,
                u3=data.u3,
                signatures={client: data.signatures[client] for client in u4},
                running_sum=data.running_sum,
                dropouts=data.dropouts,
            )
        )
        return ServerStep(state, {client: state.message_for(client) for client in state.alive})


class ServerUnmasking(SessionPhase):
    """Phase 4: collect revealed shares, then remove the masks."""

    phase = Phase.UNMASKING
    expects = (UnmaskResponse,)

    def __init__(self, data: UnmaskingData) -> None:
        self.data = data
        self._session = data.session

    @property
    def dropouts(self) -> dict[int, Dropout]:
        return self.data.dropouts

    @property
    def participants(self) -> frozenset[int]:
        return frozenset(self.data.signatures)

    @property
    def responded(self) -> frozenset[int]:
        return frozenset(self.data.responses)

    def message_for(self, client_id: int) -> UnmaskRequest:
        """The survivor-set signatures of the client's neighbours (and its own) in U4."""
        self._sender(client_id)
        wanted = self._session.neighbours(client_id) | {client_id}
        return UnmaskRequest(
            session_id=self.session_id,
            signatures=tuple(
                SurvivorSignature(client, self.data.signatures[client])
                for client in sorted(wanted & self.data.signatures.keys())
            ),
        )

    def _forget(self, client_id: int) -> None:
        self.data.responses.pop(client_id, None)

    def _receive(self, message: ClientMessage) -> ReceiveOutcome:
        assert isinstance(message, UnmaskResponse)
        data = self.data
        client = message.client_id
        self._check_session(message.session_id)
        self._sender(client)
        if self._check_duplicate(data.responses.get(client), message, client):
            return ReceiveOutcome.DUPLICATE
        neighbours = self._session.neighbours(client) & data.u2
        b_owners = [item.owner for item in message.self_mask_shares]
        s_owners = [item.owner for item in message.key_shares]
        if len(set(b_owners)) != len(b_owners) or len(set(s_owners)) != len(s_owners):
            raise invalid_message(f"client {client} revealed two shares of one secret")
        if not set(b_owners) <= neighbours & data.u3:
            raise invalid_message(f"client {client} revealed b-shares of non-surviving clients")
        if not set(s_owners) <= neighbours - data.u3:
            raise invalid_message(f"client {client} revealed key shares of surviving clients")
        for item in (*message.self_mask_shares, *message.key_shares):
            shamir.decode_share(item.share)
        data.responses[client] = message
        return ReceiveOutcome.ACCEPTED

    def close(self) -> ServerStep:
        data = self.data
        session = self._session
        self._record_silent(self.responded)
        responders = frozenset(data.responses) - data.dropouts.keys()
        if len(responders) - 1 < session.threshold:
            return self._abort_with(AbortReason.TOO_FEW_CLIENTS, responders)
        b_shares: dict[int, dict[int, int]] = {owner: {} for owner in data.u3}
        s_shares: dict[int, dict[int, int]] = {owner: {} for owner in data.u2 - data.u3}
        for responder in responders:
            response = data.responses[responder]
            for item in response.self_mask_shares:
                b_shares[item.owner][responder] = shamir.decode_share(item.share)
            for item in response.key_shares:
                s_shares[item.owner][responder] = shamir.decode_share(item.share)
        recovery = Recovery()
        try:
            add, subtract = removal_seeds(
                session,
                u2=data.u2,
                u3=data.u3,
                b_shares=b_shares,
                s_shares=s_shares,
                recovery=recovery,
            )
        except SecAggError as exc:
            reason = {
                ErrorCode.TOO_FEW_SHARES: AbortReason.TOO_FEW_SHARES,
                ErrorCode.INCONSISTENT_SHARES: AbortReason.INCONSISTENT_SHARES,
            }.get(exc.code)
            if reason is None:
                raise
            return self._abort_with(reason, responders, frozenset(recovery.outvoted))
        running_sum = data.running_sum
        add_masks(running_sum, add=add, subtract=subtract)
        result = AggregateResult(
            session_id=self.session_id,
            survivors=tuple(sorted(data.u3)),
            ring_sum=running_sum,
            outvoted=frozenset(recovery.outvoted),
        )
        return ServerStep(ServerCompleted(result, data.dropouts), {})

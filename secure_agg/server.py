"""The server side of SecAgg+ as a state machine, one class per phase.

The coordinator creates the first phase with :func:`start_server`, feeds it client
messages in any order with :meth:`ServerPhase.receive`, and ends each phase with
:meth:`ServerPhase.close` (at the deadline, or once :attr:`ServerPhase.pending` is empty),
which returns a :class:`ServerStep`: the next state and one message per client to send.

* :class:`ServerAdvertiseKeys` receives :class:`AdvertiseKeys` from the cohort.
* :class:`ServerShareKeys` receives :class:`ShareKeys` from U1 (clients that advertised).
* :class:`ServerMaskedInput` receives :class:`MaskedInput` or :class:`MaskedInputChunk`
  from U2 (clients that shared keys).
* :class:`ServerConsistencyCheck` receives :class:`ConsistencySignature` from U3 (clients
  whose masked input is summed).
* :class:`ServerUnmasking` receives :class:`UnmaskResponse` from U4 (clients that signed
  U3); closing it removes the masks.
* :class:`ServerCompleted` holds the :class:`AggregateResult`; :class:`ServerAborted` the
  :class:`AbortReason`. Neither accepts messages.

Every phase also takes :class:`ClientAbort` (the client leaves; recorded with its reason)
and :meth:`ServerPhase.abort` ends the round on the coordinator's word.

Contracts the coordinator relies on:

* **Order and duplicates.** Within a phase, messages may arrive in any order. A message
  equal to one already recorded returns :attr:`ReceiveOutcome.DUPLICATE` and changes
  nothing; a *different* message from the same client raises ``CONFLICTING_MESSAGE``.
* **Bad messages never break the round.** A malformed message, a bad signature, a stranger
  or a message for another session raises :class:`~secure_agg.errors.SecAggError` and
  leaves the state as it was. One exception: a correctly signed advert with an X25519 key
  of small order raises ``INVALID_MESSAGE`` *and* drops its sender
  (``DropReason.INVALID_MESSAGE``), because the client itself signed a key no neighbour can
  use; :meth:`ServerPhase.drop` replays such a drop after a restart. A message of another
  phase raises ``UNEXPECTED_MESSAGE`` naming both.
* **O(d) memory.** Masked inputs are added into one running sum as they arrive (whole, or
  as ``(client, offset, values)`` chunks in any order). A chunk is summed at once, so a
  client whose upload is only partly summed when the phase closes makes the sum
  unrecoverable: the round aborts with ``INCOMPLETE_MASKED_INPUT``. Stage a client's
  chunks durably and feed them once its upload is complete (the coordinator must make
  them durable before acknowledging anyway).
* **Persistence.** Each phase's state is one plain dataclass (``phase.data``): frozen
  messages, sets, dicts, one numpy array. Rebuild the phase after a restart with
  ``ServerX(data)`` or :func:`restore_server`. :meth:`message_for` regenerates the message
  that opened the phase for any client, so a reconnecting client can be served again.
* **Unmasking.** Survivors' self masks come off using their b reconstructed from b-shares;
  dropped clients' pair masks come off using their s_sk reconstructed from s_sk-shares.
  Every rebuilt secret is checked against its commitment: b against the hash its owner
  signed when it advertised, s_sk against the advertised public key. Fewer than t shares
  for any of them aborts with ``TOO_FEW_SHARES``; shares that disagree or miss the
  commitment abort with ``INCONSISTENT_SHARES``, naming the forgers in
  :attr:`ServerAborted.culprits` where more than t shares tell them apart. A forged share
  never becomes a wrong sum.
* **Erasure.** Ciphertexts are dropped when phase 2 closes, revealed shares and rebuilt
  secrets when phase 4 closes; :class:`ServerCompleted` holds only the sum.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from secure_agg import kdf, shamir, signing
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeysBroadcast,
    MaskedInput,
    MaskedInputChunk,
    ShareKeys,
    SharesDelivery,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secure_agg.params import SessionConfig
from secure_agg.prg import add_masks
from secure_agg.reasons import AbortReason, DropReason, Phase, ReceiveOutcome
from secure_agg.server_base import (
    ServerAborted,
    ServerCompleted,
    ServerPhase,
    ServerState,
    ServerStep,
    SessionPhase,
    invalid_message,
)
from secure_agg.server_state import (
    AdvertiseKeysData,
    AggregateResult,
    ChunkReceipt,
    ConsistencyCheckData,
    Dropout,
    MaskedInputData,
    ShareKeysData,
    UnmaskingData,
    chunk_digest,
)
from secure_agg.session import COMMITMENT_BYTES, Session
from secure_agg.share_box import SEALED_SHARE_BYTES
from secure_agg.unmasking import removal_seeds

__all__ = [
    "ServerAborted",
    "ServerAdvertiseKeys",
    "ServerCompleted",
    "ServerConsistencyCheck",
    "ServerMaskedInput",
    "ServerPhase",
    "ServerShareKeys",
    "ServerState",
    "ServerStep",
    "ServerUnmasking",
    "restore_server",
    "start_server",
]


def start_server(
    config: SessionConfig, *, cohort: Mapping[int, bytes] | None = None
) -> ServerAdvertiseKeys:
    """Open phase 0 for ``config``.

    ``cohort``, if given, maps each selected client id to its enrolled Ed25519 public key;
    adverts from other ids, or with another identity key, are refused.
    """
    return ServerAdvertiseKeys(
        AdvertiseKeysData(config=config, cohort=None if cohort is None else dict(cohort))
    )


class ServerAdvertiseKeys(ServerPhase):
    """Phase 0: collect signed key adverts."""

    phase = Phase.ADVERTISE_KEYS
    expects = (AdvertiseKeys,)

    def __init__(self, data: AdvertiseKeysData) -> None:
        self.data = data

    @property
    def round_id(self) -> str:
        return self.data.config.round_id

    @property
    def dropouts(self) -> dict[int, Dropout]:
        return self.data.dropouts

    @property
    def participants(self) -> frozenset[int]:
        if self.data.cohort is not None:
            return frozenset(self.data.cohort)
        return frozenset(self.data.adverts) | frozenset(self.data.dropouts)

    @property
    def responded(self) -> frozenset[int]:
        return frozenset(self.data.adverts)

    def _forget(self, client_id: int) -> None:
        self.data.adverts.pop(client_id, None)

    def _receive(self, message: ClientMessage) -> ReceiveOutcome:
        assert isinstance(message, AdvertiseKeys)
        data = self.data
        client = message.client_id
        if message.round_id != data.config.round_id:
            raise SecAggError(ErrorCode.WRONG_SESSION, "advert for another round")
        if not 0 < client < 2**63:
            raise invalid_message(f"client id {client} not in [1, 2**63)")
        if data.cohort is not None:
            enrolled = data.cohort.get(client)
            if enrolled is None:
                raise invalid_message(f"client {client} is not in the cohort")
            if enrolled != message.identity_key:
                raise invalid_message(
                    f"client {client} advertised a key that is not its enrolled one"
                )
        if client in data.dropouts:
            raise invalid_message(f"client {client} has dropped out of the round")
        recorded = data.adverts.get(client)
        if recorded is not None:
            if recorded == message:
                return ReceiveOutcome.DUPLICATE
            raise SecAggError(ErrorCode.CONFLICTING_MESSAGE, f"client {client} advertised twice")
        for key in (message.encryption_key, message.masking_key):
            if len(key) != kdf.KEY_BYTES:
                raise invalid_message("X25519 public keys are 32 bytes")
        if len(message.self_mask_commitment) != COMMITMENT_BYTES:
            raise invalid_message(f"a self-mask commitment is {COMMITMENT_BYTES} bytes")
        payload = signing.advertise_payload(
            round_id=message.round_id,
            client_id=client,
            encryption_key=message.encryption_key,
            masking_key=message.masking_key,
            self_mask_commitment=message.self_mask_commitment,
        )
        signing.verify(message.identity_key, message.signature, payload)
        try:
            for key in (message.encryption_key, message.masking_key):
                kdf.check_public_key(key)
        except SecAggError as exc:
            # Signed by the client itself, so it is the client's doing: broadcast, this key
            # would make every neighbour's key agreement fail. It is out of the round.
            data.dropouts[client] = Dropout(Phase.ADVERTISE_KEYS, DropReason.INVALID_MESSAGE)
            raise invalid_message(
                f"client {client} advertised an X25519 key of small order; it is dropped"
            ) from exc
        if len(data.adverts) >= data.config.params.max_clients:
            raise SecAggError(
                ErrorCode.TOO_MANY_CLIENTS,
                f"the layout is sized for {data.config.params.max_clients} clients",
            )
        keys = {message.encryption_key, message.masking_key, message.identity_key}
        for other in data.adverts.values():
            if keys & {other.encryption_key, other.masking_key, other.identity_key}:
                raise invalid_message(
                    f"client {client} reuses a public key of client {other.client_id}"
                )
        data.adverts[client] = message
        return ReceiveOutcome.ACCEPTED

    def close(self) -> ServerStep:
        data = self.data
        self._record_silent(self.responded)
        u1 = frozenset(data.adverts)
        if len(u1) - 1 < data.config.params.threshold:
            return self._abort_with(AbortReason.TOO_FEW_CLIENTS, u1)
        keys = tuple(data.adverts[client] for client in sorted(u1))
        session = Session(data.config, keys)
        state = ServerShareKeys(ShareKeysData(session=session, dropouts=data.dropouts))
        return ServerStep(state, {client: state.message_for(client) for client in state.alive})


class ServerShareKeys(SessionPhase):
    """Phase 1: collect each client's encrypted shares for its neighbours."""

    phase = Phase.SHARE_KEYS
    expects = (ShareKeys,)

    def __init__(self, data: ShareKeysData) -> None:
        self.data = data
        self._session = data.session

    @property
    def dropouts(self) -> dict[int, Dropout]:
        return self.data.dropouts

    @property
    def participants(self) -> frozenset[int]:
        return self._session.clients

    @property
    def responded(self) -> frozenset[int]:
        return frozenset(self.data.shares)

    def message_for(self, client_id: int) -> KeysBroadcast:
        """The broadcast that opened this phase (the same for every client)."""
        self._sender(client_id)
        return KeysBroadcast(round_id=self.round_id, keys=self._session.keys)

    def _forget(self, client_id: int) -> None:
        self.data.shares.pop(client_id, None)

    def _receive(self, message: ClientMessage) -> ReceiveOutcome:
        assert isinstance(message, ShareKeys)
        client = message.client_id
        self._check_session(message.session_id)
        self._sender(client)
        if self._check_duplicate(self.data.shares.get(client), message, client):
            return ReceiveOutcome.DUPLICATE
        recipients = [share.recipient for share in message.shares]
        if sorted(recipients) != sorted(self._session.neighbours(client)):
            raise invalid_message(f"client {client} must send exactly one share to each neighbour")
        for share in message.shares:
            if share.sender != client or share.session_id != self.session_id:
                raise invalid_message(f"client {client} sent a share with a wrong envelope")
            if len(share.ciphertext) != SEALED_SHARE_BYTES:
                raise invalid_message(f"client {client} sent a share of the wrong size")
        self.data.shares[client] = message
        return ReceiveOutcome.ACCEPTED

    def close(self) -> ServerStep:
        data = self.data
        self._record_silent(self.responded)
        u2 = frozenset(data.shares) - data.dropouts.keys()
        if len(u2) - 1 < self._session.threshold:
            return self._abort_with(AbortReason.TOO_FEW_CLIENTS, u2)
        layout = self._session.config.params.layout
        state = ServerMaskedInput(
            MaskedInputData(
                session=self._session,
                u2=u2,
                shares={client: data.shares[client] for client in u2},
                running_sum=np.zeros(layout.length, dtype=layout.dtype),
                dropouts=data.dropouts,
            )
        )
        return ServerStep(state, {client: state.message_for(client) for client in state.alive})


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
        try:
            add, subtract = removal_seeds(
                session, u2=data.u2, u3=data.u3, b_shares=b_shares, s_shares=s_shares
            )
        except SecAggError as exc:
            reason = {
                ErrorCode.TOO_FEW_SHARES: AbortReason.TOO_FEW_SHARES,
                ErrorCode.INCONSISTENT_SHARES: AbortReason.INCONSISTENT_SHARES,
            }.get(exc.code)
            if reason is None:
                raise
            return self._abort_with(reason, responders, exc.culprits)
        running_sum = data.running_sum
        add_masks(running_sum, add=add, subtract=subtract)
        result = AggregateResult(
            session_id=self.session_id,
            survivors=tuple(sorted(data.u3)),
            ring_sum=running_sum,
        )
        return ServerStep(ServerCompleted(result, data.dropouts), {})


def restore_server(
    data: AdvertiseKeysData
    | ShareKeysData
    | MaskedInputData
    | ConsistencyCheckData
    | UnmaskingData,
) -> ServerPhase:
    """Rebuild the phase that owns ``data`` (for example after a coordinator restart)."""
    if isinstance(data, AdvertiseKeysData):
        return ServerAdvertiseKeys(data)
    if isinstance(data, ShareKeysData):
        return ServerShareKeys(data)
    if isinstance(data, MaskedInputData):
        return ServerMaskedInput(data)
    if isinstance(data, ConsistencyCheckData):
        return ServerConsistencyCheck(data)
    return ServerUnmasking(data)

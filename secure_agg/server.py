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
  for any of them aborts with ``TOO_FEW_SHARES``. Where some revealed shares are wrong, a
  polynomial through t of them that meets the commitment and holds at least (n + t) / 2 of
  the n shares outvotes the rest: its secret is the owner's (the commitment binds it), so
  unmasking goes on with it and names the responders off it in
  :attr:`AggregateResult.outvoted`. Otherwise (exactly t revealed, or too many wrong) the
  round aborts with ``INCONSISTENT_SHARES``. A forged share never becomes a wrong sum.
* **Erasure.** Ciphertexts are dropped when phase 2 closes, revealed shares and rebuilt
  secrets when phase 4 closes; :class:`ServerCompleted` holds only the sum.

Phases 0 and 1 live here; phases 2 to 4 in :mod:`secure_agg.server_masking`, the base of
every state in :mod:`secure_agg.server_base`. Every state is importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from secure_agg import kdf, signing
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import (
    AdvertiseKeys,
    ClientMessage,
    KeysBroadcast,
    ShareKeys,
)
from secure_agg.params import SessionConfig
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
from secure_agg.server_masking import (
    ServerConsistencyCheck,
    ServerMaskedInput,
    ServerUnmasking,
)
from secure_agg.server_state import (
    AdvertiseKeysData,
    ConsistencyCheckData,
    Dropout,
    MaskedInputData,
    ShareKeysData,
    UnmaskingData,
)
from secure_agg.session import COMMITMENT_BYTES, Session
from secure_agg.share_box import SEALED_SHARE_BYTES

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

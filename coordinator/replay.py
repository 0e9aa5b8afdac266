"""Rebuilding the open round from the store, and writing the records a round is made of.

After a restart, or after a driver fault, ``replay`` rebuilds the open round's
``RoundState``: it feeds every stored message of each past phase into a fresh aggregation
and closes those phases again. Closing is deterministic in the messages a phase received,
and a message is stored only while its phase is open, so the rebuilt round is the one the
agents saw (same survivors, same messages) and it goes on with every acknowledged input
(docs/architecture.md, section 5).

``write_record`` stores one agent record; the record's type decides the write, so the
service only parses requests into records and never builds a store call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import singledispatch

import numpy as np

from coordinator.blobs import InputSpool
from coordinator.domain import (
    PHASE_ORDER,
    AdvertisedKeysRecord,
    ConsistencySignatureRecord,
    Participant,
    Round,
    RoundPhase,
    ShareRecord,
    UnmaskRecord,
)
from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.reasons import Dropped
from coordinator.round_settings import RoundSettings
from coordinator.round_state import RoundState, new_aggregation
from coordinator.store import Store
from secure_agg import (
    AdvertiseKeys,
    ClientAbort,
    ClientMessage,
    ConsistencySignature,
    DropReason,
    EncryptedShare,
    MaskedInputChunk,
    RevealedShare,
    ShareKeys,
    UnmaskResponse,
)

__all__ = [
    "DropRecord",
    "ShareBatch",
    "input_messages",
    "replay",
    "write_record",
    "write_records",
]


@dataclass(frozen=True)
class ShareBatch:
    """Phase 1: every sealed share one participant (``sender``) routes to its neighbours."""

    round_id: str
    sender: int
    shares: tuple[ShareRecord, ...]


@dataclass(frozen=True)
class DropRecord:
    """A participant dropped by a message: it left (AbortRound), or sent an unusable one."""

    round_id: str
    secagg_id: int
    dropped: Dropped


AgentRecord = (
    AdvertisedKeysRecord | ShareBatch | ConsistencySignatureRecord | UnmaskRecord | DropRecord
)


@singledispatch
def write_record(record: object, store: Store) -> None:
    """Store one agent record (one transaction); the record's type decides how."""
    raise TypeError(f"no store write for {type(record).__name__}")


@write_record.register
def _(record: AdvertisedKeysRecord, store: Store) -> None:
    store.add_advertised_keys(record)


@write_record.register
def _(record: ShareBatch, store: Store) -> None:
    store.add_shares(record.round_id, record.sender, list(record.shares))


@write_record.register
def _(record: ConsistencySignatureRecord, store: Store) -> None:
    store.add_consistency_signature(record)


@write_record.register
def _(record: UnmaskRecord, store: Store) -> None:
    store.add_unmask_response(record)


@write_record.register
def _(record: DropRecord, store: Store) -> None:
    store.drop_participant(record.round_id, record.secagg_id, reason=record.dropped.stored)


def write_records(records: Sequence[AgentRecord], store: Store) -> list[Exception | None]:
    """Store ``records`` in one transaction (``Store.batch``), each under a savepoint of its
    own; returns each one's refusal or failure (None: stored), so one record's error, even
    an unexpected one, undoes only that record. Raises ``StoreError`` when the transaction
    as a whole failed: then none is stored (``coordinator.group_commit``)."""
    outcomes: list[Exception | None] = []
    with store.batch():
        for record in records:
            try:
                write_record(record, store)
            except Exception as exc:  # its savepoint is rolled back; its sender is told
                outcomes.append(exc)
            else:
                outcomes.append(None)
    return outcomes


def input_messages(
    settings: RoundSettings, spool: InputSpool, secagg_id: int, session_id: bytes
) -> Iterator[MaskedInputChunk]:
    """A participant's staged masked input, read back from the spool as chunk messages."""
    layout = settings.layout
    itemsize = layout.dtype.itemsize
    for offset, data in spool.iter_chunks(
        settings.round_id, secagg_id, chunk_bytes=settings.chunk_elements * itemsize
    ):
        values = np.frombuffer(data, dtype=layout.dtype.newbyteorder("<")).astype(layout.dtype)
        yield MaskedInputChunk(
            session_id=session_id, client_id=secagg_id, offset=offset // itemsize, values=values
        )


def _drops(participants: list[Participant], phase: RoundPhase) -> list[tuple[int, Dropped]]:
    """The drops a message caused in ``phase`` (not the ones its close decided)."""
    out = []
    for p in participants:
        if p.dropped_in is not phase or p.drop_reason is None:
            continue
        try:
            dropped = Dropped.parse(p.drop_reason)
        except ValueError as exc:
            raise CoordinatorError(
                ErrorCode.INTERNAL,
                f"participant {p.secagg_id} has an unknown drop reason {p.drop_reason!r}",
            ) from exc
        if dropped.reason is not DropReason.NO_RESPONSE:
            out.append((p.secagg_id, dropped))
    return out


def _phase_messages(
    phase: RoundPhase,
    *,
    store: Store,
    spool: InputSpool,
    state: RoundState,
    participants: list[Participant],
    identity: Mapping[int, bytes],
) -> Iterator[ClientMessage]:
    settings = state.settings
    round_id = settings.round_id
    session_id = state.session_id
    if phase is RoundPhase.ADVERTISE_KEYS and settings.secure:
        for r in store.list_advertised_keys(round_id):
            yield AdvertiseKeys(
                round_id=round_id,
                client_id=r.secagg_id,
                identity_key=identity[r.secagg_id],
                encryption_key=r.encryption_key,
                masking_key=r.masking_key,
                self_mask_commitment=r.self_mask_commitment,
                signature=r.signature,
            )
    elif phase is RoundPhase.SHARE_KEYS and settings.secure:
        by_sender: dict[int, list[EncryptedShare]] = {}
        for s in store.list_shares(round_id):
            by_sender.setdefault(s.sender, []).append(
                EncryptedShare(
                    session_id=session_id,
                    sender=s.sender,
                    recipient=s.recipient,
                    ciphertext=s.ciphertext,
                )
            )
        for sender, shares in sorted(by_sender.items()):
            yield ShareKeys(session_id=session_id, client_id=sender, shares=tuple(shares))
    elif phase is RoundPhase.MASKED_INPUT:
        for p in participants:
            if p.input_complete:
                state.complete.add(p.secagg_id)
                yield from input_messages(settings, spool, p.secagg_id, session_id)
    elif phase is RoundPhase.CONSISTENCY_CHECK and settings.secure:
        for c in store.list_consistency_signatures(round_id):
            yield ConsistencySignature(
                session_id=session_id, client_id=c.secagg_id, signature=c.signature
            )
    elif phase is RoundPhase.UNMASKING and settings.secure:
        for u in store.list_unmask_responses(round_id):
            yield UnmaskResponse(
                session_id=session_id,
                client_id=u.secagg_id,
                self_mask_shares=tuple(
                    RevealedShare(owner=o, share=s) for o, s in u.self_mask_shares
                ),
                key_shares=tuple(RevealedShare(owner=o, share=s) for o, s in u.key_shares),
            )


def replay(
    round_: Round,
    *,
    store: Store,
    spool: InputSpool,
    identity: Mapping[int, bytes],
    deadline: datetime,
    now: datetime,
) -> RoundState:
    """Rebuild the open ``round_`` from the store (see the module docstring).

    ``identity`` maps secagg ids to the participants' enrolled Ed25519 keys. Raises
    ``CoordinatorError(INTERNAL)`` if a past phase does not close as it did before, which
    means the stored state is damaged; the caller aborts the round then.
    """
    settings = RoundSettings.from_json(round_.config)
    participants = store.list_participants(round_.round_id)
    state = RoundState(
        round=round_,
        settings=settings,
        participants={p.client_id: p for p in participants},
        aggregation=new_aggregation(settings, identity),
        deadline=deadline,
        phase_started=now,
    )
    for phase in PHASE_ORDER:
        for message in _phase_messages(
            phase,
            store=store,
            spool=spool,
            state=state,
            participants=participants,
            identity=identity,
        ):
            state.aggregation.receive(message)
        for secagg_id, dropped in _drops(participants, phase):
            if dropped.reason is DropReason.CLIENT_ABORTED:
                assert dropped.client_reason is not None
                state.aggregation.receive(
                    ClientAbort(
                        round_id=round_.round_id, client_id=secagg_id, reason=dropped.client_reason
                    )
                )
            else:
                state.aggregation.drop(secagg_id, dropped.reason)
        if phase is round_.phase:
            break
        closed = state.aggregation.close()
        if closed.next is None:
            raise CoordinatorError(
                ErrorCode.INTERNAL,
                f"replaying round {round_.round_id}: phase {phase.value} no longer closes as "
                f"it did ({closed.aborted or 'it finished'})",
            )
        state.aggregation = closed.next
    for r in store.list_input_chunks(round_.round_id):
        state.chunk_stored(r.secagg_id, r.chunk_index, r.sha256)
    return state

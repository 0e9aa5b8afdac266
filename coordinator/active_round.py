"""The open round in memory: its aggregation, its watchers, and its rebuild after a restart.

The database is the source of truth; an ``ActiveRound`` mirrors the open round so that
messages can be checked and summed without a query each. After a restart ``replay`` rebuilds
it from the store: it feeds every stored message of each past phase into a fresh
aggregation and closes those phases again. Closing is deterministic in the messages a phase
received, and a message is stored only while its phase is open, so the rebuilt round is the
one the agents saw (same survivors, same messages) and it goes on with every acknowledged
input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from coordinator.aggregation import Aggregation, PlainAggregation, SecureAggregation
from coordinator.blobs import InputSpool
from coordinator.domain import Participant, Round, RoundOutcome, RoundPhase
from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.round_settings import PHASE_ORDER, RoundSettings
from coordinator.store import Store
from secure_agg import (
    AbortReason,
    AdvertiseKeys,
    ClientAbort,
    ClientMessage,
    ConsistencySignature,
    DropReason,
    EncryptedShare,
    MaskedInputChunk,
    RevealedShare,
    ServerMessage,
    ShareKeys,
    UnmaskResponse,
)

__all__ = ["ActiveRound", "RoundEvent", "input_messages", "replay"]


@dataclass(frozen=True)
class RoundEvent:
    """What a watching agent is told: a phase opened (with its message for that agent, if
    any), or the round ended (``outcome`` set)."""

    round_id: str
    phase: RoundPhase
    message: ServerMessage | None = None
    outcome: RoundOutcome | None = None
    model_version: int | None = None
    reason: str | None = None
    retired: bool = False
    """This in-memory round was replaced by one rebuilt from the store: watch again."""


@dataclass(eq=False)
class ActiveRound:
    """The open round. Mutated only by the round machine, under ``lock``."""

    round: Round
    settings: RoundSettings
    participants: dict[int, Participant]  # by client id
    aggregation: Aggregation
    deadline: datetime
    phase_started: datetime
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # nothing pending: close early
    watchers: dict[int, set[asyncio.Queue[RoundEvent]]] = field(default_factory=dict)
    receipts: dict[int, dict[int, str]] = field(default_factory=dict)  # secagg → chunk → sha256
    complete: set[int] = field(default_factory=set)  # secagg ids whose input is summed
    failure: str | None = None  # set when the round must abort (e.g. a store failure)
    upload_locks: dict[int, asyncio.Lock] = field(default_factory=dict)
    finished: RoundEvent | None = None  # how the round ended, once it has
    retired: bool = False  # replaced (or being replaced) by a round rebuilt from the store

    @property
    def round_id(self) -> str:
        return self.round.round_id

    @property
    def phase(self) -> RoundPhase:
        return self.round.phase

    @property
    def secagg_ids(self) -> dict[int, int]:
        """Client id → secagg id."""
        return {c: p.secagg_id for c, p in self.participants.items()}

    def upload_lock(self, secagg_id: int) -> asyncio.Lock:
        """Serializes one participant's chunk writes (a retry racing its original)."""
        return self.upload_locks.setdefault(secagg_id, asyncio.Lock())

    def update_ready(self) -> None:
        if self.failure is not None or not self.aggregation.pending:
            self.ready.set()
        else:
            self.ready.clear()

    def current_event(self, secagg_id: int) -> RoundEvent:
        return RoundEvent(
            round_id=self.round_id,
            phase=self.phase,
            message=self.aggregation.message_for(secagg_id)
            if secagg_id in self.aggregation.alive
            else None,
        )

    def retire(self) -> None:
        """Refuse further work on this object and tell every open watch stream to watch
        again: it no longer leads the round."""
        self.retired = True
        event = RoundEvent(round_id=self.round_id, phase=self.phase, retired=True)
        for queues in self.watchers.values():
            for queue in queues:
                queue.put_nowait(event)

    def broadcast(self, events: Mapping[int, RoundEvent]) -> None:
        """Queue each secagg id's event for every stream it has open."""
        for secagg_id, queues in self.watchers.items():
            event = events.get(secagg_id)
            if event is None:
                continue
            for queue in queues:
                queue.put_nowait(event)


def new_aggregation(settings: RoundSettings, cohort: Mapping[int, bytes]) -> Aggregation:
    """Phase ADVERTISE_KEYS of a round; ``cohort`` maps secagg ids to identity keys."""
    if settings.secure:
        return SecureAggregation.start(settings.session(), cohort)
    return PlainAggregation(
        round_id=settings.round_id, layout=settings.layout, cohort=frozenset(cohort)
    )


def input_messages(
    settings: RoundSettings, spool: InputSpool, secagg_id: int, session_id: bytes
) -> list[MaskedInputChunk]:
    """A participant's staged masked input, read back from the spool as chunk messages."""
    layout = settings.layout
    itemsize = layout.dtype.itemsize
    messages = []
    for offset, data in spool.iter_chunks(
        settings.round_id, secagg_id, chunk_bytes=settings.chunk_elements * itemsize
    ):
        values = np.frombuffer(data, dtype=layout.dtype.newbyteorder("<")).astype(layout.dtype)
        messages.append(
            MaskedInputChunk(
                session_id=session_id,
                client_id=secagg_id,
                offset=offset // itemsize,
                values=values,
            )
        )
    return messages


def _client_aborts(
    round_id: str, participants: list[Participant], phase: RoundPhase
) -> list[ClientMessage]:
    out: list[ClientMessage] = []
    for p in participants:
        if p.dropped_in is phase and (p.drop_reason or "").startswith("client_aborted"):
            _, _, detail = (p.drop_reason or "").partition(":")
            try:
                reason = AbortReason(detail)
            except ValueError:
                reason = AbortReason.CANCELLED
            out.append(ClientAbort(round_id=round_id, client_id=p.secagg_id, reason=reason))
    return out


def _phase_messages(
    phase: RoundPhase,
    *,
    store: Store,
    spool: InputSpool,
    settings: RoundSettings,
    participants: list[Participant],
    identity: Mapping[int, bytes],
    session_id: bytes,
) -> list[ClientMessage]:
    round_id = settings.round_id
    messages: list[ClientMessage] = []
    if phase is RoundPhase.ADVERTISE_KEYS and settings.secure:
        messages += [
            AdvertiseKeys(
                round_id=round_id,
                client_id=r.secagg_id,
                identity_key=identity[r.secagg_id],
                encryption_key=r.encryption_key,
                masking_key=r.masking_key,
                self_mask_commitment=r.self_mask_commitment,
                signature=r.signature,
            )
            for r in store.list_advertised_keys(round_id)
        ]
    elif phase is RoundPhase.SHARE_KEYS and settings.secure:
        by_sender: dict[int, list[EncryptedShare]] = {}
        for r in store.list_shares(round_id):
            by_sender.setdefault(r.sender, []).append(
                EncryptedShare(
                    session_id=session_id,
                    sender=r.sender,
                    recipient=r.recipient,
                    ciphertext=r.ciphertext,
                )
            )
        messages += [
            ShareKeys(session_id=session_id, client_id=sender, shares=tuple(shares))
            for sender, shares in sorted(by_sender.items())
        ]
    elif phase is RoundPhase.MASKED_INPUT:
        for p in participants:
            if p.input_complete:
                messages += input_messages(settings, spool, p.secagg_id, session_id)
    elif phase is RoundPhase.CONSISTENCY_CHECK and settings.secure:
        messages += [
            ConsistencySignature(
                session_id=session_id, client_id=r.secagg_id, signature=r.signature
            )
            for r in store.list_consistency_signatures(round_id)
        ]
    elif phase is RoundPhase.UNMASKING and settings.secure:
        messages += [
            UnmaskResponse(
                session_id=session_id,
                client_id=r.secagg_id,
                self_mask_shares=tuple(
                    RevealedShare(owner=o, share=s) for o, s in r.self_mask_shares
                ),
                key_shares=tuple(RevealedShare(owner=o, share=s) for o, s in r.key_shares),
            )
            for r in store.list_unmask_responses(round_id)
        ]
    return messages + _client_aborts(round_id, participants, phase)


def replay(
    round_: Round,
    *,
    store: Store,
    spool: InputSpool,
    identity: Mapping[int, bytes],
    deadline: datetime,
    now: datetime,
) -> ActiveRound:
    """Rebuild the open ``round_`` from the store (see the module docstring).

    ``identity`` maps secagg ids to the participants' enrolled Ed25519 keys. Raises
    ``CoordinatorError(INTERNAL)`` if a past phase does not close as it did before, which
    means the stored state is damaged; the caller aborts the round then.
    """
    settings = RoundSettings.from_json(round_.config)
    participants = store.list_participants(round_.round_id)
    aggregation = new_aggregation(settings, identity)
    session_id = _session_id(aggregation)
    complete: set[int] = set()
    for phase in PHASE_ORDER:
        for message in _phase_messages(
            phase,
            store=store,
            spool=spool,
            settings=settings,
            participants=participants,
            identity=identity,
            session_id=session_id,
        ):
            aggregation.receive(message)
            if isinstance(message, MaskedInputChunk):
                complete.add(message.client_id)
        if isinstance(aggregation, SecureAggregation):
            for p in participants:
                if p.dropped_in is phase and p.drop_reason == DropReason.INVALID_MESSAGE.value:
                    aggregation.drop(p.secagg_id, DropReason.INVALID_MESSAGE)
        if phase is round_.phase:
            break
        closed = aggregation.close()
        if closed.next is None:
            raise CoordinatorError(
                ErrorCode.INTERNAL,
                f"replaying round {round_.round_id}: phase {phase.value} no longer closes as "
                f"it did ({closed.aborted or 'it finished'})",
            )
        aggregation = closed.next
        session_id = _session_id(aggregation)
    receipts: dict[int, dict[int, str]] = {}
    for r in store.list_input_chunks(round_.round_id):
        receipts.setdefault(r.secagg_id, {})[r.chunk_index] = r.sha256
    active = ActiveRound(
        round=round_,
        settings=settings,
        participants={p.client_id: p for p in participants},
        aggregation=aggregation,
        deadline=deadline,
        phase_started=now,
        receipts=receipts,
        complete=complete,
    )
    active.update_ready()
    return active


def _session_id(aggregation: Aggregation) -> bytes:
    """The secure-aggregation session id once keys are known (empty before, or in plain mode)."""
    if isinstance(aggregation, SecureAggregation):
        return aggregation.session_id
    return b""

"""The open round as a pure state: events in, decisions out (docs/architecture.md, section 3).

``RoundState`` holds what the coordinator knows about the open round: its stored ``Round``,
settings, participants, the aggregation of the current phase, the receipts of durable
chunks, and the inputs already summed. It does no I/O and reads no clock (the caller passes
``now``), as ``secure_agg`` does, so every decision the round makes can be tested in process:

- ``member`` and ``check_reached`` decide whether a request may touch the round;
- ``receive`` takes a validated message and says whether it is accepted, refused, or
  refused with its sender dropped (an advert no neighbour can use);
- ``chunk_is_new``/``chunk_stored``/``input_ready``/``feed_input`` follow a masked
  upload from its first chunk to its place in the sum;
- ``close`` ends the phase and decides: ``Advance`` to the next phase, ``Commit`` the sums,
  ``Abort`` with a reason, or ``Rebuild`` from the store when memory holds a message the
  store lacks;
- ``advanced`` applies an ``Advance`` once the store has the transition.

The driver (``coordinator.driver``) carries the decisions out against the store, the blob
store and the metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from coordinator.aggregation import Aggregation, PlainAggregation, SecureAggregation
from coordinator.domain import (
    NEXT_PHASE,
    Participant,
    Round,
    RoundOutcome,
    RoundPhase,
    RoundSums,
    phase_rank,
)
from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.reasons import Dropped, RoundAbortReason
from coordinator.round_settings import RoundSettings
from secure_agg import (
    ClientMessage,
    DropReason,
    MaskedInputChunk,
    SecAggError,
    ServerMessage,
    decode_sum,
)
from wire import Segment

__all__ = [
    "Abort",
    "Advance",
    "Commit",
    "Decision",
    "Rebuild",
    "Received",
    "RoundEvent",
    "RoundState",
    "new_aggregation",
]


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


@dataclass(frozen=True, eq=False)
class Advance:
    """The phase closed and the round goes on to ``new_phase`` until ``deadline``."""

    phase: RoundPhase
    new_phase: RoundPhase
    deadline: datetime
    dropped: Mapping[int, Dropped]
    alive: int
    aggregation: Aggregation
    messages: Mapping[int, ServerMessage]


@dataclass(frozen=True, eq=False)
class Commit:
    """Unmasking closed with a sum: commit a new model version from ``sums``."""

    phase: RoundPhase
    sums: RoundSums
    dropped: Mapping[int, Dropped]
    culprits: tuple[int, ...] = ()
    """Client ids whose revealed shares were outvoted (forged, or dealt so by the owner)."""


@dataclass(frozen=True)
class Abort:
    """The round ends without a sum; ``culprits`` are client ids proven to have caused it."""

    phase: RoundPhase
    reason: RoundAbortReason
    dropped: Mapping[int, Dropped]
    culprits: tuple[int, ...] = ()


@dataclass(frozen=True)
class Rebuild:
    """Memory holds a message the store could not keep: rebuild the round from the store."""

    phase: RoundPhase
    cause: ErrorCode


Decision = Advance | Commit | Abort | Rebuild


@dataclass(frozen=True)
class Received:
    """``receive``'s answer: ``refusal`` is raised to the caller after ``drop`` (if any) is
    stored, so a restart replays the drop."""

    refusal: CoordinatorError | None = None
    drop: Dropped | None = None


def new_aggregation(settings: RoundSettings, cohort: Mapping[int, bytes]) -> Aggregation:
    """Phase ADVERTISE_KEYS of a round; ``cohort`` maps secagg ids to identity keys."""
    if settings.secure:
        return SecureAggregation.start(settings.session(), cohort)
    return PlainAggregation(
        round_id=settings.round_id, layout=settings.layout, cohort=frozenset(cohort)
    )


def _protocol_error(exc: SecAggError) -> CoordinatorError:
    return CoordinatorError(ErrorCode.PROTOCOL_VIOLATION, f"{exc}")


@dataclass(eq=False)
class RoundState:
    """The open round (see the module docstring). Not thread-safe: callers serialize."""

    round: Round
    settings: RoundSettings
    participants: dict[int, Participant]  # by client id
    aggregation: Aggregation
    deadline: datetime
    phase_started: datetime
    receipts: dict[int, dict[int, str]] = field(default_factory=dict)  # secagg → chunk → sha256
    complete: set[int] = field(default_factory=set)  # secagg ids whose input is summed
    failure: RoundAbortReason | None = None  # the round must abort at the next close
    unstored: ErrorCode | None = None  # an accepted message the store could not keep

    @classmethod
    def opened(
        cls,
        round_: Round,
        settings: RoundSettings,
        participants: Iterable[Participant],
        identity: Mapping[int, bytes],
        *,
        now: datetime,
    ) -> RoundState:
        """A round just created in phase ADVERTISE_KEYS; ``identity``: secagg id → key."""
        return cls(
            round=round_,
            settings=settings,
            participants={p.client_id: p for p in participants},
            aggregation=new_aggregation(settings, identity),
            deadline=round_.deadline,
            phase_started=now,
        )

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

    def client_ids(self, secagg_ids: Iterable[int]) -> tuple[int, ...]:
        """The client ids of the given secagg ids, sorted (unknown ones left out)."""
        by_secagg = {p.secagg_id: p.client_id for p in self.participants.values()}
        return tuple(sorted(by_secagg[s] for s in secagg_ids if s in by_secagg))

    @property
    def ready(self) -> bool:
        """Whether the phase may close now: nothing pending, or the round must end."""
        return self.failure is not None or self.unstored is not None or not self.aggregation.pending

    @property
    def ready_to_sum(self) -> bool:
        """Whether closing now runs the aggregation (no failure decides the close first)."""
        return self.failure is None and self.unstored is None

    # --- requests -----------------------------------------------------------------------

    def member(self, client_id: int, phase: RoundPhase | None) -> Participant:
        """The alive participant ``client_id``, in ``phase`` if one is given (a dropped one
        is told so, whatever the phase)."""
        participant = self.participants.get(client_id)
        if participant is None:
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT, f"client {client_id} is not in round {self.round_id}"
            )
        if participant.secagg_id not in self.aggregation.alive:
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT,
                f"client {client_id} was dropped from round {self.round_id}",
            )
        if phase is not None and phase is not self.phase:
            raise CoordinatorError(
                ErrorCode.WRONG_PHASE,
                f"round {self.round_id} is in phase {self.phase.value}, not {phase.value}",
            )
        return participant

    def answered(self, client_id: int, phase: RoundPhase) -> bool:
        """Whether the round has passed ``phase`` with ``client_id`` still in it.

        Then its message for ``phase`` was accepted (each close drops every participant
        that sent none), and a message for that phase now is a resend whose answer was lost
        (docs/architecture.md, section 3, "Resends"): the round no longer reads that phase.
        """
        participant = self.participants.get(client_id)
        return (
            participant is not None
            and phase_rank(phase) < phase_rank(self.phase)
            and participant.secagg_id in self.aggregation.alive
        )

    def check_reached(self, seen: RoundPhase | None) -> None:
        """A read names the latest phase its agent has seen; the round must have reached it."""
        if seen is not None and phase_rank(seen) > phase_rank(self.phase):
            raise CoordinatorError(
                ErrorCode.WRONG_PHASE,
                f"round {self.round_id} is in phase {self.phase.value}; "
                f"it has not reached {seen.value}",
            )

    def receive(self, participant: Participant, message: ClientMessage) -> Received:
        """Offer one validated message to the aggregation (it changes nothing if refused)."""
        try:
            self.aggregation.receive(message)
        except SecAggError as exc:
            dropped = participant.secagg_id not in self.aggregation.alive
            return Received(
                refusal=_protocol_error(exc),
                drop=Dropped(DropReason.INVALID_MESSAGE) if dropped else None,
            )
        return Received()

    def may_leave(self, participant: Participant, phase: RoundPhase) -> None:
        """A participant whose masked input is summed must stay: the sum needs its shares."""
        if phase is RoundPhase.MASKED_INPUT and participant.secagg_id in self.complete:
            raise CoordinatorError(
                ErrorCode.WRONG_PHASE,
                "your masked input is already summed; the round needs you to stay",
            )

    def store_failed(self, code: ErrorCode) -> None:
        """An accepted message could not be stored: the round must be rebuilt from the store."""
        self.unstored = code

    def fail(self, reason: RoundAbortReason) -> None:
        """The round cannot go on: it aborts with ``reason`` at the next close."""
        self.failure = reason

    # --- masked inputs ------------------------------------------------------------------

    def chunk_is_new(self, secagg_id: int, chunk_index: int, digest: str) -> bool:
        """Whether a chunk must be written: False for a retry of a durable chunk (same
        bytes) or once the input is summed. Other bytes for a durable chunk are refused."""
        known = self.receipts.get(secagg_id, {}).get(chunk_index)
        if known is not None and known != digest:
            raise CoordinatorError(
                ErrorCode.CONFLICT, f"chunk {chunk_index} was already received with other bytes"
            )
        return known is None and secagg_id not in self.complete

    def chunk_stored(self, secagg_id: int, chunk_index: int, digest: str) -> None:
        self.receipts.setdefault(secagg_id, {})[chunk_index] = digest

    def input_ready(self, secagg_id: int) -> bool:
        """Every chunk of the input is durable and it is not summed yet."""
        return (
            len(self.receipts.get(secagg_id, {})) == self.settings.total_chunks
            and secagg_id not in self.complete
        )

    def feed_input(self, secagg_id: int, messages: Iterable[MaskedInputChunk]) -> None:
        """Sum a durable input, read back from the spool. Raises ``SecAggError``."""
        for message in messages:
            self.aggregation.receive(message)
        self.complete.add(secagg_id)

    @property
    def session_id(self) -> bytes:
        """The secure-aggregation session id once keys are known (empty before, or plain)."""
        if isinstance(self.aggregation, SecureAggregation):
            return self.aggregation.session_id
        return b""

    # --- closing a phase ----------------------------------------------------------------

    def close(self, now: datetime) -> Decision:
        """End the current phase and decide what follows (CPU-bound at unmasking)."""
        phase = self.phase
        if self.unstored is not None:
            return Rebuild(phase, self.unstored)
        if self.failure is not None:
            return Abort(phase, self.failure, {})
        closed = self.aggregation.close()
        if closed.aborted is not None:
            return Abort(phase, closed.aborted, closed.dropped, self.client_ids(closed.culprits))
        if closed.ring_sum is not None:
            return Commit(
                phase,
                self._sums(closed.ring_sum, len(closed.survivors)),
                closed.dropped,
                self.client_ids(closed.culprits),
            )
        assert closed.next is not None
        if len(closed.next.alive) < self.settings.min_clients:
            return Abort(phase, RoundAbortReason.TOO_FEW_CLIENTS, closed.dropped)
        new_phase = NEXT_PHASE[phase]
        return Advance(
            phase=phase,
            new_phase=new_phase,
            deadline=now + self.settings.phase_duration(new_phase),
            dropped=closed.dropped,
            alive=len(closed.next.alive),
            aggregation=closed.next,
            messages=closed.messages,
        )

    def _sums(self, ring_sum: np.ndarray, survivors: int) -> RoundSums:
        sums = decode_sum(self.settings.layout, ring_sum, num_clients=survivors)
        return RoundSums(
            delta=sums[Segment.DELTA],
            second_moment=sums.get(Segment.SECOND_MOMENT),
            weight=float(sums[Segment.WEIGHT][0]),
            clipped=float(sums[Segment.CLIP_COUNT][0]),
            survivors=survivors,
            samples=float(sums[Segment.SAMPLES][0]) if Segment.SAMPLES in sums else 0.0,
            train_loss=float(sums[Segment.TRAIN_LOSS][0]) if Segment.TRAIN_LOSS in sums else 0.0,
        )

    def advanced(self, round_: Round, decision: Advance, now: datetime) -> dict[int, RoundEvent]:
        """Apply ``decision`` once the store holds ``round_`` in its new phase; returns each
        participant's event (secagg id → event) to push to its watchers."""
        self.round = round_
        self.aggregation = decision.aggregation
        self.deadline = decision.deadline
        self.phase_started = now
        return {
            secagg: RoundEvent(
                round_id=self.round_id,
                phase=decision.new_phase,
                message=decision.messages.get(secagg),
            )
            for secagg in self.secagg_ids.values()
        }

    def ended(self, round_: Round, *, model_version: int, reason: str | None) -> RoundEvent:
        """The event that tells every participant how the stored ``round_`` ended."""
        self.round = round_
        return RoundEvent(
            round_id=self.round_id,
            phase=round_.phase,
            outcome=round_.outcome,
            model_version=model_version,
            reason=reason,
        )

    def current_event(self, secagg_id: int) -> RoundEvent:
        """The event a participant that starts watching now sees first."""
        alive = secagg_id in self.aggregation.alive
        return RoundEvent(
            round_id=self.round_id,
            phase=self.phase,
            message=self.aggregation.message_for(secagg_id) if alive else None,
        )

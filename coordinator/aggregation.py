"""The aggregation behind a round: SecAgg+ (the default) or plain sums (for comparison).

The round machine drives one ``Aggregation`` per phase: it feeds client messages to
``receive`` and calls ``close`` at the deadline or once ``pending`` is empty. Both kinds
expose the same phases, so the round's state machine, its persistence and its replay after
a restart do not depend on which one runs.

- ``SecureAggregation`` wraps the ``secure_agg`` server phases.
- ``PlainAggregation`` sums unmasked quantized vectors. Its key, consistency and unmasking
  phases expect nothing and close at once. It exists to measure what secure aggregation
  costs (the ingest benchmark); it gives the coordinator every client's update in the clear.

Masked inputs are fed whole-client: the round machine stages a client's chunks durably and
feeds them only once all are stored, so a phase never closes over half an input.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from coordinator.domain import NEXT_PHASE, PHASE_ORDER, RoundPhase
from coordinator.reasons import Dropped, RoundAbortReason
from secure_agg import (
    ClientAbort,
    ClientMessage,
    DropReason,
    MaskedInputChunk,
    ReceiveOutcome,
    SecAggError,
    SegmentLayout,
    ServerAborted,
    ServerCompleted,
    ServerMessage,
    ServerPhase,
    SessionConfig,
    start_server,
)
from secure_agg import ErrorCode as SecAggCode
from secure_agg.server_state import Dropout

__all__ = ["Aggregation", "PhaseClosed", "PlainAggregation", "SecureAggregation"]

_SECAGG_PHASE = dict(enumerate(PHASE_ORDER))  # secure_agg numbers the same phases from 0


@dataclass(frozen=True, eq=False)
class PhaseClosed:
    """What closing a phase produced.

    Exactly one of: ``next`` (the following phase; ``messages`` open it, one per secagg
    id), ``ring_sum`` (the round completed: the survivors' summed vector), or ``aborted``
    (why the round ended without a sum). ``dropped`` names the clients the closed phase
    dropped, and why.
    """

    next: Aggregation | None = None
    messages: Mapping[int, ServerMessage] = field(default_factory=dict)
    ring_sum: np.ndarray | None = None
    survivors: tuple[int, ...] = ()
    aborted: RoundAbortReason | None = None
    dropped: Mapping[int, Dropped] = field(default_factory=dict)
    culprits: frozenset[int] = frozenset()
    """Secagg ids whose revealed shares were outvoted (``AggregateResult.outvoted``): with
    a sum, or before an abort."""


class Aggregation(abc.ABC):
    """One phase of a round's aggregation. Not thread-safe: the round machine serializes."""

    @property
    @abc.abstractmethod
    def phase(self) -> RoundPhase: ...

    @property
    @abc.abstractmethod
    def alive(self) -> frozenset[int]:
        """Secagg ids still in the round."""

    @property
    @abc.abstractmethod
    def pending(self) -> frozenset[int]:
        """Alive secagg ids this phase still waits for; the phase may close once empty."""

    @abc.abstractmethod
    def receive(self, message: ClientMessage) -> ReceiveOutcome:
        """Record one message. Raises ``SecAggError`` for a bad one and changes nothing."""

    @abc.abstractmethod
    def drop(self, secagg_id: int, reason: DropReason) -> ReceiveOutcome:
        """Count a participant as dropped (replaying a drop the store recorded)."""

    @abc.abstractmethod
    def close(self) -> PhaseClosed:
        """End the phase."""

    @abc.abstractmethod
    def message_for(self, secagg_id: int) -> ServerMessage | None:
        """The message that opened this phase for ``secagg_id`` (None if there is none)."""


def _unexpected(message: str) -> SecAggError:
    return SecAggError(SecAggCode.UNEXPECTED_MESSAGE, message)


def _dropped(dropout: Dropout) -> Dropped:
    return Dropped(dropout.reason, dropout.client_reason)


class SecureAggregation(Aggregation):
    """A ``secure_agg`` server phase."""

    def __init__(self, state: ServerPhase) -> None:
        self._state = state

    @classmethod
    def start(cls, session: SessionConfig, cohort: Mapping[int, bytes]) -> SecureAggregation:
        """Phase ADVERTISE_KEYS for ``cohort``: secagg id → enrolled Ed25519 public key."""
        return cls(start_server(session, cohort=cohort))

    @property
    def phase(self) -> RoundPhase:
        return _SECAGG_PHASE[int(self._state.phase)]

    @property
    def session_id(self) -> bytes:
        """The session id, once phase ADVERTISE_KEYS has closed (empty before)."""
        session_id: bytes = getattr(self._state, "session_id", b"")
        return session_id

    @property
    def alive(self) -> frozenset[int]:
        return self._state.alive

    @property
    def pending(self) -> frozenset[int]:
        return self._state.pending

    def receive(self, message: ClientMessage) -> ReceiveOutcome:
        return self._state.receive(message)

    def drop(self, secagg_id: int, reason: DropReason) -> ReceiveOutcome:
        """Count a participant as dropped (replaying a drop the store recorded)."""
        return self._state.drop(secagg_id, reason)

    def message_for(self, secagg_id: int) -> ServerMessage | None:
        if self.phase is RoundPhase.ADVERTISE_KEYS:
            return None
        opener = getattr(self._state, "message_for", None)
        if opener is None:
            return None
        message: ServerMessage = opener(secagg_id)
        return message

    def close(self) -> PhaseClosed:
        before = set(self._state.dropouts)
        step = self._state.close()
        state = step.state
        after = state.dropouts if hasattr(state, "dropouts") else {}
        dropped = {i: _dropped(d) for i, d in after.items() if i not in before}
        if isinstance(state, ServerCompleted):
            return PhaseClosed(
                ring_sum=state.result.ring_sum,
                survivors=tuple(state.result.survivors),
                dropped=dropped,
                culprits=state.result.outvoted,
            )
        if isinstance(state, ServerAborted):
            return PhaseClosed(
                aborted=RoundAbortReason.from_secagg(state.reason),
                dropped=dropped,
                culprits=state.culprits,
            )
        assert isinstance(state, ServerPhase)
        return PhaseClosed(next=SecureAggregation(state), messages=step.messages, dropped=dropped)


class PlainAggregation(Aggregation):
    """Plain sums of quantized vectors, through the same phases (see the module docstring)."""

    def __init__(
        self,
        *,
        round_id: str,
        layout: SegmentLayout,
        cohort: frozenset[int],
        phase: RoundPhase = RoundPhase.ADVERTISE_KEYS,
    ) -> None:
        self._round_id = round_id
        self._layout = layout
        self._phase = phase
        self._alive = set(cohort)
        self._sum = np.zeros(layout.length, dtype=layout.dtype)
        self._received: dict[int, int] = {}  # secagg id → elements received
        self._complete: set[int] = set()

    @property
    def phase(self) -> RoundPhase:
        return self._phase

    @property
    def alive(self) -> frozenset[int]:
        return frozenset(self._alive)

    @property
    def pending(self) -> frozenset[int]:
        if self._phase is RoundPhase.MASKED_INPUT:
            return frozenset(self._alive - self._complete)
        return frozenset()

    def message_for(self, secagg_id: int) -> ServerMessage | None:
        return None

    def receive(self, message: ClientMessage) -> ReceiveOutcome:
        if isinstance(message, ClientAbort):
            self._alive.discard(message.client_id)
            return ReceiveOutcome.ACCEPTED
        if self._phase is not RoundPhase.MASKED_INPUT or not isinstance(message, MaskedInputChunk):
            raise _unexpected(
                f"plain aggregation in {self._phase.value} does not expect {type(message).__name__}"
            )
        client = message.client_id
        if client not in self._alive:
            raise _unexpected(f"client {client} is not in the round")
        if client in self._complete:
            return ReceiveOutcome.DUPLICATE
        values = np.asarray(message.values, dtype=self._layout.dtype)
        end = message.offset + values.shape[0]
        if message.offset < 0 or end > self._layout.length:
            raise _unexpected(f"chunk [{message.offset}, {end}) is out of range")
        np.add(self._sum[message.offset : end], values, out=self._sum[message.offset : end])
        self._received[client] = self._received.get(client, 0) + values.shape[0]
        if self._received[client] >= self._layout.length:
            self._complete.add(client)
            return ReceiveOutcome.INPUT_COMPLETE
        return ReceiveOutcome.ACCEPTED

    def drop(self, secagg_id: int, reason: DropReason) -> ReceiveOutcome:
        self._alive.discard(secagg_id)
        return ReceiveOutcome.ACCEPTED

    def close(self) -> PhaseClosed:
        if self._phase is RoundPhase.MASKED_INPUT:
            dropped = dict.fromkeys(self._alive - self._complete, Dropped(DropReason.NO_RESPONSE))
            self._alive &= self._complete
        else:
            dropped = {}
        if self._phase is RoundPhase.UNMASKING:
            # an input in the sum counts, even if its client left afterwards
            return PhaseClosed(
                ring_sum=self._sum, survivors=tuple(sorted(self._complete)), dropped=dropped
            )
        self._phase = NEXT_PHASE[self._phase]
        return PhaseClosed(next=self, dropped=dropped)

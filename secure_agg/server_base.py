"""What every server state shares: dispatch, dropout bookkeeping and aborts.

:class:`ServerPhase` is the base of the phases that collect messages. It routes
:class:`~secure_agg.messages.ClientAbort` to the dropout record, rejects any message the
phase does not expect with ``UNEXPECTED_MESSAGE`` naming both, and builds the
:class:`~secure_agg.messages.RoundAborted` notices of an abort. Subclasses
(:mod:`secure_agg.server`, :mod:`secure_agg.server_masking`) say who takes part, what
counts as a response and what closing means.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import ClientAbort, ClientMessage, RoundAborted, ServerMessage
from secure_agg.reasons import AbortReason, DropReason, Phase, ReceiveOutcome
from secure_agg.server_state import AggregateResult, Dropout
from secure_agg.session import Session

__all__ = [
    "ServerAborted",
    "ServerCompleted",
    "ServerPhase",
    "ServerState",
    "ServerStep",
    "SessionPhase",
    "invalid_message",
]


def invalid_message(message: str) -> SecAggError:
    """A ``SecAggError`` with ``INVALID_MESSAGE``."""
    return SecAggError(ErrorCode.INVALID_MESSAGE, message)


@dataclasses.dataclass(frozen=True)
class ServerStep:
    """The state after closing a phase, and the message for each client."""

    state: ServerState
    messages: dict[int, ServerMessage]


class ServerState(abc.ABC):
    """Base of all server states."""

    phase: ClassVar[Phase]

    def receive(self, message: ClientMessage) -> ReceiveOutcome:
        """Record one client message (see the module docstring)."""
        raise SecAggError(
            ErrorCode.UNEXPECTED_MESSAGE,
            f"server state {type(self).__name__} does not expect {type(message).__name__}",
        )


class ServerCompleted(ServerState):
    """The round produced a sum; ``dropouts`` says who left and why."""

    phase = Phase.COMPLETED

    def __init__(self, result: AggregateResult, dropouts: dict[int, Dropout]) -> None:
        self.result = result
        self.dropouts = dropouts


class ServerAborted(ServerState):
    """The round ended without a sum in ``during``, because of ``reason``.

    ``culprits`` names the clients proven to have caused the abort (those that revealed
    forged shares), where that could be told; it is empty otherwise.
    """

    phase = Phase.ABORTED

    def __init__(
        self,
        reason: AbortReason,
        during: Phase,
        dropouts: dict[int, Dropout],
        culprits: frozenset[int] = frozenset(),
    ) -> None:
        self.reason = reason
        self.during = during
        self.dropouts = dropouts
        self.culprits = culprits


class ServerPhase(ServerState):
    """A phase that collects messages until :meth:`close`."""

    expects: ClassVar[tuple[type, ...]]

    @property
    @abc.abstractmethod
    def round_id(self) -> str: ...

    @property
    @abc.abstractmethod
    def dropouts(self) -> dict[int, Dropout]: ...

    @property
    @abc.abstractmethod
    def participants(self) -> frozenset[int]:
        """Clients this phase expects to hear from, dropped ones included."""

    @property
    @abc.abstractmethod
    def responded(self) -> frozenset[int]:
        """Clients whose message for this phase is recorded (complete, for inputs)."""

    @abc.abstractmethod
    def close(self) -> ServerStep:
        """End the phase: record non-responders, check the threshold, move on."""

    @abc.abstractmethod
    def _receive(self, message: ClientMessage) -> ReceiveOutcome: ...

    @abc.abstractmethod
    def _forget(self, client_id: int) -> None:
        """Drop what this phase recorded from a client that aborted, where possible."""

    @property
    def alive(self) -> frozenset[int]:
        """Participants that have not dropped out."""
        return self.participants - self.dropouts.keys()

    @property
    def pending(self) -> frozenset[int]:
        """Alive participants not heard from yet; close early once it is empty."""
        return self.alive - self.responded

    def receive(self, message: ClientMessage) -> ReceiveOutcome:
        if isinstance(message, ClientAbort):
            return self._client_abort(message)
        if not isinstance(message, self.expects):
            raise SecAggError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"server state {type(self).__name__} does not expect {type(message).__name__}",
            )
        return self._receive(message)

    def abort(self, reason: AbortReason = AbortReason.CANCELLED) -> ServerStep:
        """End the round without a sum; tell every alive participant."""
        return self._abort_with(reason, self.alive)

    def drop(self, client_id: int, reason: DropReason) -> ReceiveOutcome:
        """Count a participant as dropped for ``reason``, on the coordinator's word.

        For replaying a drop the coordinator persisted (such as an advert refused with
        ``DropReason.INVALID_MESSAGE``) after a restart. ``DUPLICATE`` if it was already
        dropped for that reason; ``CONFLICTING_MESSAGE`` if for another.
        """
        if client_id not in self.participants:
            raise invalid_message(f"client {client_id} is not in phase {self.phase.name}")
        previous = self.dropouts.get(client_id)
        if previous is not None:
            if previous.reason is reason and previous.client_reason is None:
                return ReceiveOutcome.DUPLICATE
            raise SecAggError(ErrorCode.CONFLICTING_MESSAGE, f"client {client_id} already dropped")
        self.dropouts[client_id] = Dropout(self.phase, reason)
        self._forget(client_id)
        return ReceiveOutcome.ACCEPTED

    def _client_abort(self, message: ClientAbort) -> ReceiveOutcome:
        if message.round_id != self.round_id:
            raise SecAggError(ErrorCode.WRONG_SESSION, "abort notice for another round")
        if message.client_id not in self.participants:
            raise invalid_message(f"client {message.client_id} is not in phase {self.phase.name}")
        previous = self.dropouts.get(message.client_id)
        if previous is not None:
            if previous.client_reason is message.reason:
                return ReceiveOutcome.DUPLICATE
            raise SecAggError(
                ErrorCode.CONFLICTING_MESSAGE, f"client {message.client_id} already dropped"
            )
        self.dropouts[message.client_id] = Dropout(
            self.phase, DropReason.CLIENT_ABORTED, message.reason
        )
        self._forget(message.client_id)
        return ReceiveOutcome.ACCEPTED

    def _sender(self, client_id: int) -> None:
        """Check that ``client_id`` is an alive participant of this phase."""
        if client_id not in self.participants:
            raise invalid_message(f"client {client_id} is not a participant of {self.phase.name}")
        if client_id in self.dropouts:
            raise invalid_message(f"client {client_id} has dropped out of the round")

    def _record_silent(self, responders: frozenset[int]) -> None:
        for client in self.alive - responders:
            self.dropouts[client] = Dropout(self.phase, DropReason.NO_RESPONSE)

    def _abort_with(
        self,
        reason: AbortReason,
        recipients: frozenset[int],
        culprits: frozenset[int] = frozenset(),
    ) -> ServerStep:
        notice = RoundAborted(round_id=self.round_id, reason=reason)
        messages: dict[int, ServerMessage] = dict.fromkeys(recipients, notice)
        return ServerStep(ServerAborted(reason, self.phase, self.dropouts, culprits), messages)


class SessionPhase(ServerPhase):
    """A phase after phase 0: it has a session and a session id to check."""

    _session: Session

    @property
    def round_id(self) -> str:
        return self._session.config.round_id

    @property
    def session_id(self) -> bytes:
        return self._session.session_id

    def _check_session(self, session_id: bytes) -> None:
        if session_id != self._session.session_id:
            raise SecAggError(ErrorCode.WRONG_SESSION, "message for another session")

    def _check_duplicate(self, recorded: object, message: object, client_id: int) -> bool:
        if recorded is None:
            return False
        if recorded == message:
            return True
        raise SecAggError(
            ErrorCode.CONFLICTING_MESSAGE,
            f"client {client_id} already sent a different {type(message).__name__}",
        )

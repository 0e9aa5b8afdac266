"""What every client state shares: the round identity, dispatch, and aborts.

:class:`ClientState` is the base of the client states of :mod:`secure_agg.client` (phases 0
and 1) and :mod:`secure_agg.client_masking` (phases 2 to 4). It moves any live state to
:class:`ClientAborted` on the server's :class:`~secure_agg.messages.RoundAborted`, rejects a
message the state does not expect with ``UNEXPECTED_MESSAGE`` naming both, and turns an
:class:`AbortError` raised by a handler into :class:`ClientAborted` and the
:class:`~secure_agg.messages.ClientAbort` notice. :class:`ClientIdentity` is what the client
is for the whole round; :func:`check_ids` aborts on ids outside the session.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import ClientAbort, ClientMessage, RoundAborted, ServerMessage
from secure_agg.params import SessionConfig
from secure_agg.randomness import RandomSource
from secure_agg.reasons import AbortReason, Phase
from secure_agg.session import Session

__all__ = [
    "AbortError",
    "ClientAborted",
    "ClientIdentity",
    "ClientState",
    "ClientStep",
    "check_ids",
]


@dataclasses.dataclass(frozen=True)
class ClientStep:
    """The state after handling one input, and the message to send (if any)."""

    state: ClientState
    message: ClientMessage | None


@dataclasses.dataclass(frozen=True)
class ClientIdentity:
    """What the client is, for the whole round."""

    config: SessionConfig
    client_id: int
    identity_key: Ed25519PrivateKey
    source: RandomSource
    corrupt_rate: float


class AbortError(Exception):
    """Internal: unwinds a handler to the aborted state; never leaves the client states."""

    def __init__(self, reason: AbortReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class ClientState(abc.ABC):
    """Base of the client states: dispatch, rejection of unexpected messages, aborts."""

    phase: ClassVar[Phase]
    expects: ClassVar[tuple[type, ...]] = ()
    live: ClassVar[bool] = True

    def __init__(self, identity: ClientIdentity) -> None:
        self._identity = identity

    @property
    def client_id(self) -> int:
        return self._identity.client_id

    def handle(self, message: ServerMessage) -> ClientStep:
        """Handle one server message; see :mod:`secure_agg.client` for the outcomes."""
        if (
            self.live
            and isinstance(message, RoundAborted)
            and message.round_id == self._identity.config.round_id
        ):
            return ClientStep(ClientAborted(self._identity, AbortReason.SERVER_ABORTED), None)
        if not isinstance(message, self.expects):
            raise SecAggError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"client state {type(self).__name__} does not expect {type(message).__name__}",
            )
        try:
            return self._handle(message)
        except AbortError as abort:
            return self._abort(abort.reason)

    def _handle(self, message: ServerMessage) -> ClientStep:
        raise SecAggError(
            ErrorCode.UNEXPECTED_MESSAGE,
            f"client state {type(self).__name__} does not expect {type(message).__name__}",
        )

    def _abort(self, reason: AbortReason) -> ClientStep:
        notice = ClientAbort(
            round_id=self._identity.config.round_id,
            client_id=self._identity.client_id,
            reason=reason,
        )
        return ClientStep(ClientAborted(self._identity, reason), notice)


class ClientAborted(ClientState):
    """The round is over for this client; ``reason`` says why. Accepts no message."""

    phase = Phase.ABORTED
    live = False

    def __init__(self, identity: ClientIdentity, reason: AbortReason) -> None:
        super().__init__(identity)
        self.reason = reason


def check_ids(session: Session, ids: Iterable[int]) -> None:
    """Abort with ``UNKNOWN_CLIENT_ID`` unless every id in ``ids`` is in the session."""
    if not set(ids) <= session.clients:
        raise AbortError(AbortReason.UNKNOWN_CLIENT_ID)

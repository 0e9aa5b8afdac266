"""The open round in memory: its pure state, and the locks and streams around it.

``ActiveRound`` wraps the ``RoundState`` of the open round (``coordinator.round_state``)
with what only a running service needs: the lock that serializes changes, the queue that
stores the accepted messages in shared transactions (``coordinator.group_commit``), the
event that lets the driver close a phase early, the watch streams of the participants, and the
per-participant upload locks. The database is the source of truth; ``coordinator.replay``
rebuilds the state from it after a restart or a driver fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.domain import RoundPhase
from coordinator.errors import CoordinatorError, ErrorCode, StoreError
from coordinator.group_commit import GroupCommit, WriteBatch
from coordinator.round_state import RoundEvent, RoundState

__all__ = ["ActiveRound"]


@dataclass(eq=False)
class ActiveRound:
    """The open round. Its state changes only under ``lock``; ``write`` stores a batch of its
    accepted messages (``coordinator.replay.write_records`` on the service's store)."""

    state: RoundState
    write: WriteBatch[Any]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # nothing pending: close early
    watchers: dict[int, set[asyncio.Queue[RoundEvent]]] = field(default_factory=dict)
    upload_locks: dict[int, asyncio.Lock] = field(default_factory=dict)
    finished: RoundEvent | None = None  # how the round ended, once it has
    retired: bool = False  # replaced (or being replaced) by a round rebuilt from the store
    writes: GroupCommit[Any] = field(init=False)  # accepted messages on their way to the store

    def __post_init__(self) -> None:
        self.writes = GroupCommit(self.write, on_settled=self._settled)
        self.update_ready()

    def _settled(self, outcomes: Sequence[BaseException | None]) -> None:
        """A batch of accepted messages reached the store, or some did not: then the state
        holds a message the store lacks, and the next close rebuilds the round."""
        for outcome in outcomes:
            if isinstance(outcome, StoreError):
                self.state.store_failed(outcome.code)
            elif outcome is not None:
                self.state.store_failed(ErrorCode.INTERNAL)
        self.update_ready()

    @property
    def round_id(self) -> str:
        return self.state.round_id

    @property
    def phase(self) -> RoundPhase:
        return self.state.phase

    def upload_lock(self, secagg_id: int) -> asyncio.Lock:
        """Serializes one participant's chunk writes (a retry racing its original)."""
        return self.upload_locks.setdefault(secagg_id, asyncio.Lock())

    def update_ready(self) -> None:
        if self.state.ready:
            self.ready.set()
        else:
            self.ready.clear()

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

    async def stream(self, secagg_id: int) -> AsyncIterator[RoundEvent]:
        """A participant's events: the current phase first, then each change, until the round
        ends. Raises UNAVAILABLE once the round is rebuilt from the store (watch again)."""
        queue: asyncio.Queue[RoundEvent] = asyncio.Queue()
        # Under the lock that phase changes take, so no change is both the first event
        # and queued.
        async with self.lock:
            if self.retired:  # rebuilt while we waited for the lock: nothing more comes here
                raise CoordinatorError(
                    ErrorCode.STORE_UNAVAILABLE,
                    f"round {self.round_id} was rebuilt from the store; watch it again",
                )
            ended = self.finished  # it may have ended while we waited for the lock
            if ended is None:
                first = self.state.current_event(secagg_id)
                self.watchers.setdefault(secagg_id, set()).add(queue)
        if ended is not None:
            yield ended
            return
        try:
            yield first
            while True:
                event = await queue.get()
                if event.retired:
                    raise CoordinatorError(
                        ErrorCode.STORE_UNAVAILABLE,
                        f"round {self.round_id} was rebuilt from the store; watch it again",
                    )
                yield event
                if event.outcome is not None:
                    return
        finally:
            self.watchers.get(secagg_id, set()).discard(queue)

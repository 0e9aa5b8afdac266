"""Group commit: the phase messages of one round, stored in shared transactions.

Every phase message the coordinator accepts is stored before it is acknowledged
(docs/architecture.md, "Durability"). Each used to be written in a transaction of its own,
one after another under the round's lock, and at a cohort of 1,000 the transactions were
the coordinator's largest cost: 1,000 commits per phase, each waiting for the one before.

Now a message is checked and summed under the lock as before, then queued here, and the
lock is released. One flush at a time writes everything queued in one transaction (each
record under its own savepoint, so a record the store refuses undoes only itself) and
settles each sender's future once that transaction has committed: the acknowledgement
still follows the commit that holds the message. While a flush runs, the next messages
queue, so the batch grows with the load.

Two rules keep the store the source of truth:

- a record the store refused, or a batch whose commit failed, marks the round's state as
  holding an unstored message (``on_settled``) before the queue reports itself drained;
- whoever decides on the state (the driver closing a phase, or rebuilding the round from
  the store) holds the round's lock, so nothing new is queued, and waits for ``drained()``
  first, so it never acts on a message the store may lack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit", "WriteBatch"]

R = TypeVar("R")

WriteBatch = Callable[[Sequence[R]], Sequence[BaseException | None]]
"""Stores records in one transaction; returns each one's refusal (None: stored). Raises when
the transaction as a whole failed. Runs in a worker thread."""


def _consume(future: asyncio.Future[None]) -> None:
    """Reads a settled future's exception, for a sender that stopped waiting (it went away)."""
    if not future.cancelled():
        future.exception()


class GroupCommit(Generic[R]):
    """A queue of records written in batches, one batch at a time, by ``write``;
    ``on_settled`` hears each batch's outcomes before its senders do."""

    def __init__(
        self,
        write: WriteBatch[R],
        on_settled: Callable[[Sequence[BaseException | None]], None] = lambda _: None,
    ) -> None:
        self._write = write
        self._on_settled = on_settled
        self._queued: list[tuple[R, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    def submit(self, record: R) -> asyncio.Future[None]:
        """Queue ``record``; the future is settled once its batch has committed (or with the
        store's refusal of it). Await it through ``asyncio.shield``: a sender that goes away
        does not take the write, or anyone else's, with it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._queued.append((record, future))
        self._drained.clear()
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def drained(self) -> None:
        """Until nothing is queued or being written (call it holding the round's lock)."""
        await self._drained.wait()

    async def _flush(self) -> None:
        batch: list[tuple[R, asyncio.Future[None]]] = []
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                outcomes: Sequence[BaseException | None]
                try:
                    outcomes = await asyncio.to_thread(self._write, [record for record, _ in batch])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the transaction failed: no record of it is stored
                    outcomes = [exc] * len(batch)
                self._on_settled(outcomes)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
                batch = []
        finally:
            # a cancelled flush (the service stopping) leaves its senders unanswered, not
            # acknowledged: their calls end with the service
            for _, future in (*batch, *self._queued):
                future.cancel()
            self._queued = []
            self._flushing = None
            self._drained.set()

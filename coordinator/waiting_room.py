"""The waiting room: agents long-polling for a round, and the selection of a cohort.

Agents call ``check_in`` and wait (up to their hold) for an ``Assignment`` or a
``RetryAfter``. The driver calls ``select``: once ``cohort`` agents wait, or
``min_clients`` of them after the selection deadline, it picks up to ``selected`` of those
waiting at random (revoked ones are left out), and ``assign`` answers the chosen ones.
Agents that were not selected keep waiting through a round, so a large fleet fills the
over-selection margin (docs/architecture.md, section 3).

The room also keeps the two fleet gauges: agents seen in the last minute, and enrolled ones.
Neither selection nor the gauges load the clients table: the revoked ids come from a
``Revocations`` read at most once a second, and the enrolled ones are counted in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from coordinator.auth import Revocations
from coordinator.config import CoordinatorConfig
from coordinator.domain import NOT_STARTING_NOTE, Client, Participant, RoundPhase
from coordinator.errors import StoreError
from coordinator.metrics import Metrics
from coordinator.store import Store

__all__ = ["Assignment", "RetryAfter", "WaitingRoom"]

log = logging.getLogger(__name__)

CONNECTED_WINDOW = 60.0  # seconds since a client's last call for it to count as connected
GAUGE_INTERVAL = 5.0
NOT_STARTING_INTERVAL = 60.0  # seconds between two log lines saying why no round starts


@dataclass(frozen=True)
class Assignment:
    round_id: str
    secagg_id: int
    phase: RoundPhase = RoundPhase.ADVERTISE_KEYS  # the round's phase when assigned


@dataclass(frozen=True)
class RetryAfter:
    seconds: int
    reason: str


class WaitingRoom:
    """Check-ins waiting for a round, and the cohort selection over them."""

    def __init__(
        self,
        *,
        store: Store,
        config: CoordinatorConfig,
        metrics: Metrics,
        rng: random.Random,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.rng = rng
        self.monotonic = monotonic
        self.revocations = Revocations(store, clock=monotonic)
        self.clock = clock
        self.closed: RetryAfter | None = None  # set once no round will be offered again
        self._waiting: dict[int, asyncio.Future[Assignment | RetryAfter]] = {}
        self._changed = asyncio.Event()
        self._seen: dict[int, float] = {}
        self._store_failing = False
        self.not_starting: str | None = None  # why no round starts, once it has waited long

    def seen(self, client_id: int) -> None:
        self._seen[client_id] = self.monotonic()

    async def check_in(self, client: Client, *, wait: float) -> Assignment | RetryAfter:
        """Wait up to ``wait`` seconds for a round to select ``client``."""
        if self.closed is not None:
            return self.closed
        previous = self._waiting.get(client.client_id)
        if previous is not None and not previous.done():
            previous.set_result(RetryAfter(1, "checked in again elsewhere"))
        future: asyncio.Future[Assignment | RetryAfter] = asyncio.get_running_loop().create_future()
        self._waiting[client.client_id] = future
        self._changed.set()
        try:
            async with asyncio.timeout(max(0.0, wait)):
                return await asyncio.shield(future)
        except TimeoutError:
            if future.done():
                return future.result()
            return RetryAfter(1, "no round for this client yet")
        finally:
            if self._waiting.get(client.client_id) is future:
                del self._waiting[client.client_id]

    async def select(self) -> list[int]:
        """Wait for enough agents (see the module docstring); the chosen client ids.

        While it waits, the gauges say how many agents wait and for how long, and every
        ``NOT_STARTING_INTERVAL`` seconds the log says why no round starts."""
        first = None
        started = reminded = self.monotonic()
        waiting: list[int] = []
        while True:
            # Every check-in wakes this loop, so it looks at each waiting agent only once
            # enough of them wait for a round to start: below min_clients, the size of the
            # room (which still counts answered agents not yet gone) says so at no cost.
            count = len(self._waiting)
            if count >= self.config.min_clients:
                waiting = [c for c, f in self._waiting.items() if not f.done()]
                if len(waiting) >= self.config.min_clients:
                    waiting = await self._not_revoked(waiting)
                count = len(waiting)
            now = self.monotonic()
            if count and first is None:
                first = now
            if count >= self.config.cohort:
                break
            if (
                first is not None
                and count >= self.config.min_clients
                and now - first >= self.config.deadlines.selection
            ):
                break
            self.metrics.waiting_clients.set(count)
            self.metrics.selection_waiting_seconds.set(now - started)
            if now - reminded >= NOT_STARTING_INTERVAL:
                reminded = now
                self.not_starting = self._why_not_starting(count, now - started)
                log.warning("no round is starting: %s", self.not_starting)
                await self._note(self.not_starting)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._changed.wait()
        self.metrics.waiting_clients.set(len(waiting))
        self.metrics.selection_waiting_seconds.set(0)
        if self.not_starting is not None:
            self.not_starting = None
            await self._note(None)
        return self.rng.sample(waiting, min(len(waiting), self.config.selected))

    async def _note(self, text: str | None) -> None:
        """Keep why no round starts in the store, for ``fedadamw-coordinator status``."""
        try:
            await asyncio.to_thread(self.store.set_note, NOT_STARTING_NOTE, text, now=self.clock())
        except StoreError as exc:
            log.warning(
                "cannot note in the store why no round starts (%s): %s", exc.code.value, exc
            )

    def _why_not_starting(self, waiting: int, seconds: float) -> str:
        config = self.config
        return (
            f"{waiting} agent{'' if waiting == 1 else 's'} of task {config.task!r} waiting "
            f"for {seconds:.0f}s; a round starts with cohort = {config.cohort} of them, or with "
            f"min_clients = {config.min_clients} after the selection deadline of "
            f"{config.deadlines.selection:g}s ({self._connected_now()} agents called in the "
            f"last {CONNECTED_WINDOW:.0f}s)"
        )

    def _connected_now(self) -> int:
        now = self.monotonic()
        return sum(1 for t in self._seen.values() if now - t < CONNECTED_WINDOW)

    async def _not_revoked(self, waiting: list[int]) -> list[int]:
        """Drop revoked clients from the waiting ones (revoked while they waited)."""
        revoked = await self.revocations.current()
        for client_id in revoked.intersection(waiting):
            self._answer(client_id, RetryAfter(60, "revoked"))
        return [c for c in waiting if c not in revoked]

    def assign(self, round_id: str, participants: Iterable[Participant]) -> None:
        """Answer the selected agents' check-ins with their assignment."""
        for p in participants:
            self._answer(p.client_id, Assignment(round_id, p.secagg_id))

    def close(self, answer: RetryAfter) -> None:
        """No round will be offered again: answer every waiting agent, and later ones."""
        self.closed = answer
        for client_id in list(self._waiting):
            self._answer(client_id, answer)

    def cancel(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.cancel()

    def _answer(self, client_id: int, answer: Assignment | RetryAfter) -> None:
        future = self._waiting.get(client_id)
        if future is not None and not future.done():
            future.set_result(answer)

    async def keep_gauges(self) -> None:
        """Update the fleet gauges every few seconds, until cancelled."""
        while True:
            self.metrics.connected.set(self._connected_now())
            await self._count_enrolled()
            await asyncio.sleep(GAUGE_INTERVAL)

    async def _count_enrolled(self) -> None:
        try:
            enrolled = await asyncio.to_thread(self.store.count_enrolled)
        except StoreError as exc:
            if not self._store_failing:
                log.warning("cannot count enrolled clients (%s): %s", exc.code.value, exc)
            self._store_failing = True
            return
        if self._store_failing:
            log.info("counting enrolled clients again")
        self._store_failing = False
        self.metrics.enrolled.set(enrolled)

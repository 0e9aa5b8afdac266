"""One leader: the lock a coordinator holds while it drives rounds (architecture.md §5).

Exactly one ``fedadamw-coordinator run`` may drive rounds against a database and use a data
directory. ``LeaderLock`` makes that so with up to two locks, always taken in this order:

1. **The data directory**: ``fcntl.flock(LOCK_EX)`` on ``DIR/leader.lock``, whatever the
   database. It guards what lives only in the directory (the spool, the blobs, the TLS
   files). The holder writes JSON into the file: ``{"pid", "host", "since", "role"}``, which
   is how a waiting process names it. The kernel drops the lock when the holder's process
   ends, ``kill -9`` included, so a restart never waits for a stale lock; the file is never
   removed (removing it would let two processes lock two different files).
2. **PostgreSQL**, when the store is PostgreSQL: ``pg_try_advisory_lock(key)`` on a dedicated
   connection (AUTOCOMMIT, no pool) kept open while the process leads. The key is a
   constant: the first 8 bytes of sha256 over ``fedadamw-coordinator leader`` and the
   connection's schema (``current_schema()``), so coordinators on different schemas of one
   database are independent deployments. The connection's ``application_name`` is
   ``fedadamw-coordinator <pid>@<host>``; a waiting process names the holder through
   ``pg_locks`` joined with ``pg_stat_activity``. The session sets server-side TCP
   keepalives, so the server notices a holder whose host vanished within about 30 s.

**Standby.** A second process on the same data directory or database does not fail: it
waits, polling every ``poll_interval`` (0.5 s), and leads as soon as both locks are free.
While it waits the caller binds no port and runs no round (``coordinator.server`` takes the
lock before anything else). It logs once at WARNING naming the holder (pid, host, since
when), then at INFO every ``remind_every`` (60 s). ``acquire(timeout=...)`` gives up with
``StandbyTimeoutError`` (exit code 3 for the CLI); cancelling ``acquire`` (SIGTERM) releases
whatever it had taken. If the database cannot be reached at the first attempt, ``acquire``
raises the store's ``STORE_UNAVAILABLE`` as opening the store would; later, a standby rides
out database outages.

**Lock loss.** Once held, a watcher checks every ``check_interval`` (1 s) that the lock file
is still the file locked (same inode) and that the PostgreSQL session is alive and still
holds the advisory lock. If the session died (a database restart, a terminated backend) and
a fresh connection gets the lock again at once, leadership continues with a WARNING;
otherwise ``lost`` is set, ``lost_reason`` says why, and the watcher logs at ERROR. The
server then stops and exits with code 4 (``EXIT_LEADER_LOST``) for its supervisor to
restart it, which then waits as a standby if another process has taken over.

    lock = LeaderLock(data_dir, db_url)
    await lock.acquire(timeout=None)       # waits as a standby while another leads
    ...                                    # serve; watch lock.lost
    await lock.release()

This module holds ``LeaderLock`` and its errors; the two locks are
:mod:`coordinator.leader_file` and :mod:`coordinator.leader_postgres`, and the holder they
describe is :mod:`coordinator.leader_holder`. Every public name is importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from coordinator.errors import ErrorCode, StoreError
from coordinator.leader_file import LOCK_FILE, FileLock
from coordinator.leader_holder import Holder, now_utc
from coordinator.leader_postgres import PostgresLock, advisory_key, application_name
from coordinator.store.session import parse_url

__all__ = [
    "EXIT_LEADER_LOST",
    "EXIT_STANDBY_TIMEOUT",
    "LOCK_FILE",
    "Holder",
    "LeaderLock",
    "LeadershipError",
    "StandbyTimeoutError",
    "advisory_key",
    "application_name",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_STANDBY_TIMEOUT = 3
"""The exit code when ``--standby-timeout`` ran out before this process could lead."""

EXIT_LEADER_LOST = 4
"""The exit code when the leader lost its lock and could not take it again at once."""


class LeadershipError(Exception):
    """This process cannot lead; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class StandbyTimeoutError(LeadershipError):
    """The standby timeout ran out while another process held the lock."""

    exit_code = EXIT_STANDBY_TIMEOUT


class LeaderLock:
    """The data directory's lock file and, for PostgreSQL, the advisory lock (module doc)."""

    def __init__(
        self,
        data_dir: Path,
        db_url: str | None = None,
        *,
        poll_interval: float = 0.5,
        check_interval: float = 1.0,
        remind_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.poll_interval = poll_interval
        self.check_interval = check_interval
        self.remind_every = remind_every
        self.clock = clock
        self._file = FileLock(self.data_dir / LOCK_FILE)
        url = parse_url(db_url) if db_url else None
        postgres = url is not None and url.get_backend_name() == "postgresql"
        self._postgres = PostgresLock(url) if url is not None and postgres else None
        self._mutex = threading.Lock()  # one thread at a time touches the locks
        self._watcher: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        """Set when the lock was lost and could not be taken again at once."""
        self.lost_reason: str | None = None
        self.since: datetime | None = None
        """When this process became the leader."""

    @property
    def held(self) -> bool:
        """Whether this process leads (all its locks held, none lost)."""
        return self.since is not None and not self.lost.is_set()

    def describe(self) -> str:
        """What this lock consists of, for log lines."""
        parts = [f"{self._file.path} (flock)"]
        if self._postgres is not None:
            parts.append(f"{self._postgres.lock_name} (advisory lock {self._postgres.key})")
        return " and ".join(parts)

    async def __aenter__(self) -> LeaderLock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()

    async def acquire(self, *, timeout: float | None = None) -> None:
        """Return once this process leads, waiting as a standby while another does.

        ``timeout`` (seconds; None: forever; 0: do not wait) raises ``StandbyTimeoutError``
        naming the holder. Cancelled or failing, it releases what it had taken.
        """
        if self.held:
            return
        started = self.clock()
        reminder: float | None = None
        try:
            if self._postgres is not None:  # unreachable at first: fail as the store would
                await asyncio.to_thread(self._locked, self._postgres.connect)
            while True:
                holder = await asyncio.to_thread(self._locked, self._try_once)
                if holder is None:
                    break
                now = self.clock()
                waited = now - started
                if reminder is None:
                    log.warning(
                        "another coordinator is the leader: %s. Waiting as a standby: this "
                        "one does not listen or run rounds until it takes over%s",
                        holder,
                        "" if timeout is None else f" (for at most {timeout:g} s)",
                    )
                    reminder = now + self.remind_every
                elif now >= reminder:
                    log.info("still a standby after %.0f s: %s", waited, holder)
                    reminder = now + self.remind_every
                if timeout is not None and waited >= timeout:
                    raise StandbyTimeoutError(
                        f"not the leader after {timeout:g} s as a standby "
                        f"(--standby-timeout): {holder}"
                    )
                delay = self.poll_interval
                if timeout is not None:
                    delay = max(0.0, min(delay, timeout - waited))
                await asyncio.sleep(delay)
        except BaseException:
            await asyncio.to_thread(self._locked, self._release_all)
            raise
        self.since = now_utc()
        if reminder is not None:
            log.warning(
                "took over as the leader after %.0f s as a standby: %s",
                self.clock() - started,
                self.describe(),
            )
        else:
            log.info("the leader: holding %s", self.describe())
        self._watcher = asyncio.create_task(self._watch(), name="leader-lock-watch")

    async def release(self) -> None:
        """Stop watching and release both locks (idempotent)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await asyncio.to_thread(self._locked, self._release_all)
        self.since = None

    # --- in a worker thread, under _mutex ---------------------------------------------

    def _locked(self, call: Callable[[], T]) -> T:
        with self._mutex:
            return call()

    def _try_once(self) -> Holder | None:
        """Take what is free; the holder of the first lock still taken, or None."""
        if not self._file.held:
            if not self._file.try_acquire():
                return self._file.holder()
            self._file.write_holder("standby" if self._postgres else "leader", now_utc())
        if self._postgres is not None and not self._postgres.held:
            try:
                if not self._postgres.try_acquire():
                    return self._postgres.holder()
            except StoreError as error:  # the database is away: keep waiting, reconnect
                if error.code is not ErrorCode.STORE_UNAVAILABLE:
                    raise
                self._postgres.disconnect()
                return Holder(
                    lock=self._postgres.lock_name,
                    detail=f"the database cannot be reached now: {error}",
                )
            self._file.write_holder("leader", now_utc())
        return None

    def _check(self) -> str | None:
        """None while both locks are held (taking PostgreSQL's again at once if it can)."""
        problem = self._file.problem()
        if problem is not None or self._postgres is None:
            return problem
        problem = self._postgres.problem()
        if problem is None:
            return None
        if self._postgres.reacquire():
            log.warning("%s; took the leader lock again at once on a new session", problem)
            return None
        return f"{problem}, and the lock could not be taken again at once"

    def _release_all(self) -> None:
        try:
            if self._postgres is not None:
                self._postgres.release()
        finally:
            self._file.release()

    # --- in the event loop ------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                problem = await asyncio.wait_for(
                    asyncio.to_thread(self._locked, self._check),
                    timeout=max(60.0, 10 * self.check_interval),
                )
            except TimeoutError:
                problem = "checking the leader lock did not finish within a minute"
            except Exception as error:  # never let the watcher die silently
                problem = f"checking the leader lock failed: {error!r}"
            if problem is not None:
                self.lost_reason = problem
                log.error("lost the leader lock: %s", problem)
                self.lost.set()
                return

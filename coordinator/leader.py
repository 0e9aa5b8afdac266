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
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, exc, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from coordinator.errors import ErrorCode, StoreError
from coordinator.store.session import (
    POSTGRES_CONNECT_TIMEOUT_S,
    describe_url,
    parse_url,
    translate_errors,
)

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

LOCK_FILE = "leader.lock"
"""The data directory's lock file."""

EXIT_STANDBY_TIMEOUT = 3
"""The exit code when ``--standby-timeout`` ran out before this process could lead."""

EXIT_LEADER_LOST = 4
"""The exit code when the leader lost its lock and could not take it again at once."""

LOCK_NAME = "fedadamw-coordinator leader"
_APPLICATION = "fedadamw-coordinator"
_APPLICATION_PATTERN = re.compile(rf"^{_APPLICATION} (\d+)@(.*)$")
_MAX_APPLICATION_NAME = 63  # PostgreSQL truncates application_name to NAMEDATALEN - 1


class LeadershipError(Exception):
    """This process cannot lead; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class StandbyTimeoutError(LeadershipError):
    """The standby timeout ran out while another process held the lock."""

    exit_code = EXIT_STANDBY_TIMEOUT


def advisory_key(schema: str) -> int:
    """The PostgreSQL advisory-lock key (a signed 64-bit integer) for ``schema``."""
    digest = hashlib.sha256(f"{LOCK_NAME} {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def application_name(pid: int | None = None, host: str | None = None) -> str:
    """``fedadamw-coordinator <pid>@<host>``, as the lock connection announces itself."""
    name = f"{_APPLICATION} {os.getpid() if pid is None else pid}@{host or socket.gethostname()}"
    return name[:_MAX_APPLICATION_NAME]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as far as can be told; ``str()`` is for log lines."""

    lock: str
    pid: int | None = None
    host: str | None = None
    since: datetime | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.pid is None and self.since is None:
            return f"{self.lock}: {self.detail or 'held by a process that cannot be identified'}"
        parts = []
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.host:
            parts.append(f"on host {self.host}")
        if self.since is not None:
            parts.append(f"since {_iso(self.since)}")
        who = " ".join(parts) or "another process"
        return f"{self.lock} is held by {who}" + (f" ({self.detail})" if self.detail else "")


class _FileLock:
    """``flock`` on ``DIR/leader.lock``. Not thread-safe: ``LeaderLock`` serialises it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        return True

    def write_holder(self, role: str, since: datetime) -> None:
        assert self._fd is not None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _iso(since),
            "role": role,
        }
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def holder(self) -> Holder:
        where = f"the data directory {self.path.parent} ({LOCK_FILE})"
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict):
            info = {}
        pid, host, since = info.get("pid"), info.get("host"), info.get("since")
        moment = None
        if isinstance(since, str):
            with contextlib.suppress(ValueError):
                moment = datetime.fromisoformat(since)
        role = info.get("role")
        return Holder(
            lock=where,
            pid=pid if isinstance(pid, int) else None,
            host=host if isinstance(host, str) else None,
            since=moment,
            detail="itself waiting for the database lock" if role == "standby" else "",
        )

    def problem(self) -> str | None:
        """Why the lock no longer guards ``path`` (None while it does)."""
        try:
            stat = os.stat(self.path)
        except OSError as error:
            return f"the lock file {self.path} is gone ({error.strerror})"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return f"the lock file {self.path} was replaced by another file"
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd, self._identity = self._fd, None, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the only descriptor drops the flock


class _PostgresLock:
    """``pg_try_advisory_lock`` on a connection of its own. Not thread-safe (see above)."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.description = describe_url(url)
        connect_args: dict[str, Any] = {
            "application_name": application_name(),
            # Client side: notice a vanished server (keepalives; unacknowledged data).
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        }
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        try:
            self._engine: Engine = create_engine(
                url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=connect_args
            )
        except (ImportError, exc.NoSuchModuleError) as error:
            raise StoreError(
                ErrorCode.STORE_UNAVAILABLE,
                f"no driver for {self.description} ({error}); "
                "install the PostgreSQL extra: pip install 'fedadamw[postgres]'",
            ) from error
        self._connection: Connection | None = None
        self.key: int | None = None
        self.schema = ""
        self.held = False

    @property
    def lock_name(self) -> str:
        return f"the leader lock of schema {self.schema!r} in the {self.description}"

    def connect(self) -> None:
        """Open the connection and derive the key (``StoreError`` if it cannot be reached)."""
        if self._connection is not None:
            return
        with translate_errors(self.url):
            connection = self._engine.connect()
            try:
                row = connection.execute(
                    text("SELECT coalesce(current_schema(), current_setting('search_path'))")
                ).one()
                # Server side: notice a vanished holder within about 30 s, not hours.
                for setting, value in (
                    ("tcp_keepalives_idle", 10),
                    ("tcp_keepalives_interval", 5),
                    ("tcp_keepalives_count", 3),
                ):
                    connection.execute(text(f"SET {setting} = {value}"))
            except BaseException:
                connection.close()
                raise
        self._connection = connection
        self.schema = str(row[0])
        self.key = advisory_key(self.schema)

    def _halves(self) -> dict[str, int]:
        assert self.key is not None
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        return {"key": self.key, "hi": unsigned >> 32, "lo": unsigned & 0xFFFF_FFFF}

    def try_acquire(self) -> bool:
        self.connect()
        assert self._connection is not None
        with translate_errors(self.url):
            got = self._connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), self._halves()
            ).scalar_one()
        self.held = bool(got)
        return self.held

    def holder(self) -> Holder:
        assert self._connection is not None
        with translate_errors(self.url):
            row = self._connection.execute(
                text(
                    "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.database = (SELECT oid FROM pg_database "
                    "                  WHERE datname = current_database()) "
                    "AND l.classid::bigint = :hi AND l.objid::bigint = :lo "
                    "LIMIT 1"
                ),
                self._halves(),
            ).first()
        if row is None:
            return Holder(lock=self.lock_name)
        backend, name, client, started = row
        session = f"database session {backend}" + (f" from {client}" if client else "")
        match = _APPLICATION_PATTERN.match(name or "")
        if match is None:
            return Holder(
                lock=self.lock_name,
                since=started,
                detail=f"{session}, application_name {name!r}",
            )
        return Holder(
            lock=self.lock_name,
            pid=int(match[1]),
            host=match[2],
            since=started,
            detail=f"{session}, connected at that time",
        )

    def problem(self) -> str | None:
        """Why this session no longer holds the lock (None while it does)."""
        if self._connection is None:
            return "the database connection holding the lock is closed"
        try:
            with translate_errors(self.url):
                held = self._connection.execute(
                    text(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() "
                        "AND locktype = 'advisory' AND granted AND objsubid = 1 "
                        "AND classid::bigint = :hi AND objid::bigint = :lo)"
                    ),
                    self._halves(),
                ).scalar_one()
        except (StoreError, exc.SQLAlchemyError, OSError) as error:
            return f"the database session holding the lock ended: {error}"
        return None if held else "the database session no longer holds the advisory lock"

    def reacquire(self) -> bool:
        """A fresh connection, and the lock again if it is free; False if not."""
        self.disconnect()
        try:
            return self.try_acquire()
        except (StoreError, exc.SQLAlchemyError, OSError) as error:
            log.warning("could not take the leader lock again: %s", error)
            self.disconnect()
            return False

    def disconnect(self) -> None:
        connection, self._connection, self.held = self._connection, None, False
        if connection is not None:
            # Closing a connection whose session already died fails; that is the point.
            with contextlib.suppress(exc.SQLAlchemyError, OSError):
                connection.close()

    def release(self) -> None:
        if self._connection is not None and self.held:
            # A dead session released the lock already; closing below ends it anyway.
            with contextlib.suppress(exc.SQLAlchemyError, OSError):
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), self._halves())
        self.disconnect()
        self._engine.dispose()


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
        self._file = _FileLock(self.data_dir / LOCK_FILE)
        url = parse_url(db_url) if db_url else None
        postgres = url is not None and url.get_backend_name() == "postgresql"
        self._postgres = _PostgresLock(url) if url is not None and postgres else None
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
        self.since = _now()
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
            self._file.write_holder("standby" if self._postgres else "leader", _now())
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
            self._file.write_holder("leader", _now())
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

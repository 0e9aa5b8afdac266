"""The PostgreSQL leader lock: ``pg_try_advisory_lock`` on a connection of its own.

:class:`PostgresLock` opens one AUTOCOMMIT connection (no pool) with client- and server-side
TCP keepalives, derives the advisory key from the connection's schema (:func:`advisory_key`),
announces itself as :func:`application_name`, takes and releases the lock, names the holder
through ``pg_locks`` and ``pg_stat_activity``, tells when its session no longer holds the
lock (:meth:`PostgresLock.problem`), and tries to take it again on a fresh connection
(:meth:`PostgresLock.reacquire`). How :class:`~coordinator.leader.LeaderLock` uses it:
:mod:`coordinator.leader`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, exc, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from coordinator.errors import ErrorCode, StoreError
from coordinator.leader_holder import Holder
from coordinator.store.session import (
    POSTGRES_CONNECT_TIMEOUT_S,
    describe_url,
    translate_errors,
)

__all__ = ["LOCK_NAME", "PostgresLock", "advisory_key", "application_name"]

# The leader lock's log lines keep the logger name they have always had.
log = logging.getLogger("coordinator.leader")

LOCK_NAME = "fedadamw-coordinator leader"
_APPLICATION = "fedadamw-coordinator"
_APPLICATION_PATTERN = re.compile(rf"^{_APPLICATION} (\d+)@(.*)$")
_MAX_APPLICATION_NAME = 63  # PostgreSQL truncates application_name to NAMEDATALEN - 1


def advisory_key(schema: str) -> int:
    """The PostgreSQL advisory-lock key (a signed 64-bit integer) for ``schema``."""
    digest = hashlib.sha256(f"{LOCK_NAME} {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def application_name(pid: int | None = None, host: str | None = None) -> str:
    """``fedadamw-coordinator <pid>@<host>``, as the lock connection announces itself."""
    name = f"{_APPLICATION} {os.getpid() if pid is None else pid}@{host or socket.gethostname()}"
    return name[:_MAX_APPLICATION_NAME]


class PostgresLock:
    """``pg_try_advisory_lock`` on a connection of its own. Not thread-safe: ``LeaderLock``
    serialises it."""

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

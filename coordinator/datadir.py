"""The coordinator's data directory and its database, for the service and the admin commands.

``DIR/database.json`` records which database the directory's service uses
(architecture.md §5, "The database record")::

    {"url": "postgresql+psycopg://fedadamw@db:5432/fedadamw", "recorded_at": "..."}

The URL is kept without its password; the password comes from ``--db`` or from libpq's
environment (``PGPASSWORD``, ``~/.pgpass``). ``run`` writes the record once it has opened
its store (``record_database``); the admin commands read it (``admin_database_url``) and so
reach the service's database without ``--db``. Only ``run`` creates a database: the admin
commands create no file, directory or SQLite database, and a directory that is not a
coordinator's is an ``INVALID_ARGUMENT`` error that says what to do. A data directory from
before the record (``coordinator.db`` and no record) counts as recording that file.

At start-up, ``while_unreachable`` retries a database that cannot be reached
(``STORE_UNAVAILABLE``) with jittered exponential backoff, for ``--db-wait`` seconds.

Kept free of torch and gRPC so that admin commands start fast.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy.engine import URL

from coordinator.errors import CoordinatorError, ErrorCode, StoreError
from coordinator.store import Store
from coordinator.store.schema import current_revision, upgrade
from coordinator.store.session import parse_url
from coordinator.store.sql import SqlStore, default_sqlite_url
from wire.files import write_atomically

__all__ = [
    "DEFAULT_DB_WAIT_S",
    "RECORD_FILE",
    "admin_database_url",
    "database_url",
    "explain_unavailable",
    "open_store",
    "prepare_data_dir",
    "record_database",
    "recorded_database",
    "require_data_dir",
    "service_database_url",
    "shown_url",
    "while_unreachable",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

RECORD_FILE = "database.json"
"""The data directory's record of its service's database (module docstring)."""

DEFAULT_DB_WAIT_S = 60.0
"""How long ``run`` waits at start-up for a database it cannot reach (``--db-wait``)."""

_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 10.0


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory 0700 (or narrow an existing one to 0700). For ``run`` only."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def database_url(data_dir: Path, db_url: str | None) -> str:
    return db_url or default_sqlite_url(data_dir)


def open_store(data_dir: Path, db_url: str | None, *, create: bool = False) -> Store:
    """The store, checked to be at the code's schema.

    ``create`` builds the schema in an empty database (first start); an older schema is
    never upgraded implicitly: the error names ``fedadamw-coordinator db upgrade``.
    """
    url = database_url(data_dir, db_url)
    if create and current_revision(url) is None:
        upgrade(url)
    store = SqlStore(url)
    try:
        store.check_schema()
    except CoordinatorError:
        store.close()
        raise
    return store


# --- the database record -------------------------------------------------------------


def shown_url(url: str) -> str:
    """``url`` without its password (nor a ``password`` query parameter): what the record
    keeps and what messages show."""
    parsed = parse_url(url)
    bare = URL.create(
        drivername=parsed.drivername,
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query={k: v for k, v in parsed.query.items() if k != "password"},
    )
    return bare.render_as_string(hide_password=False)


def _identity(url: str) -> URL:
    """What makes two URLs name the same database: no password, SQLite paths resolved,
    PostgreSQL's default port filled in."""
    parsed = parse_url(shown_url(url))
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None  # parse_url refuses in-memory databases
        return URL.create("sqlite", database=str(Path(parsed.database).resolve()))
    return parsed.set(port=parsed.port or 5432, host=parsed.host or "localhost")


def recorded_database(data_dir: Path) -> str | None:
    """The URL ``DIR/database.json`` records (no password), or None if there is no record.

    ``INVALID_ARGUMENT`` for a record that cannot be read or is not one.
    """
    path = data_dir / RECORD_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
        url = data["url"]
        if not isinstance(url, str):
            raise TypeError(f"url is {type(url).__name__}, not a string")
        parse_url(url)
    except (ValueError, KeyError, TypeError, CoordinatorError) as exc:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"{path} is not a database record ({exc}); start `fedadamw-coordinator run "
            f"--data-dir {data_dir} --db URL` to write it again",
        ) from exc
    return url


def record_database(data_dir: Path, db_url: str | None) -> None:
    """Record the database the service opened (``run``, once its store is open).

    Written atomically, 0600, without the password. A record naming another database is
    replaced, with a WARNING.
    """
    url = shown_url(database_url(data_dir, db_url))
    try:
        before = recorded_database(data_dir)
    except CoordinatorError as exc:
        log.warning("replacing an unreadable database record: %s", exc)
        before = None
    if before is not None and _identity(before) != _identity(url):
        log.warning(
            "the data directory %s recorded the database %s; it now records %s, which this "
            "service uses",
            data_dir,
            before,
            url,
        )
    record = {"url": url, "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}
    write_atomically(data_dir / RECORD_FILE, (json.dumps(record, indent=2) + "\n").encode())


def service_database_url(data_dir: Path, db_url: str | None) -> str:
    """The database ``run`` uses: ``--db``, else the recorded one, else SQLite in the
    data directory (created on first start)."""
    if db_url is not None:
        return db_url
    recorded = recorded_database(data_dir) if data_dir.is_dir() else None
    return recorded or default_sqlite_url(data_dir)


def _not_a_data_dir(data_dir: Path, why: str) -> CoordinatorError:
    return CoordinatorError(
        ErrorCode.INVALID_ARGUMENT,
        f"{data_dir} is not a coordinator data directory: {why}; start "
        f"`fedadamw-coordinator run --data-dir {data_dir}` first, or pass --db",
    )


def require_data_dir(data_dir: Path) -> Path:
    """``data_dir`` if it is a directory, else ``INVALID_ARGUMENT`` saying what to do."""
    if not data_dir.exists():
        raise _not_a_data_dir(data_dir, "it does not exist")
    if not data_dir.is_dir():
        raise _not_a_data_dir(data_dir, "it is not a directory")
    return data_dir


def admin_database_url(data_dir: Path, db_url: str | None) -> str:
    """The database an admin command opens; it creates nothing.

    Without ``db_url``: the one ``data_dir`` records (or its ``coordinator.db`` if the
    directory predates the record). With ``db_url``: that one, which must name the recorded
    database if there is a record (passwords aside); the directory need not exist then (a
    migration job may run where it is not mounted). A SQLite database must exist already.
    Raises ``INVALID_ARGUMENT`` naming what is wrong and what to do.
    """
    if data_dir.exists():
        require_data_dir(data_dir)
    recorded = recorded_database(data_dir) if data_dir.is_dir() else None
    if recorded is None and (data_dir / "coordinator.db").is_file():
        recorded = default_sqlite_url(data_dir)  # a data directory from before the record
    if db_url is not None:
        if recorded is not None and _identity(db_url) != _identity(recorded):
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"--db names {shown_url(db_url)}, but the data directory {data_dir} records "
                f"{shown_url(recorded)} as its service's database; pass the service's --db, "
                "or leave --db out to use the recorded one (to move the service to the other "
                f"database, remove {data_dir / RECORD_FILE}: `run` records the one it uses)",
            )
        url = db_url
    elif recorded is not None:
        url = recorded
    elif not data_dir.exists():
        raise _not_a_data_dir(data_dir, "it does not exist")
    else:
        raise _not_a_data_dir(
            data_dir, f"no database record ({RECORD_FILE}) and no SQLite database (coordinator.db)"
        )
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).is_file():
        # SQLite would create the file on connect: only `run` creates a database.
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"there is no SQLite database at {parsed.database}; only `fedadamw-coordinator "
            "run` creates one",
        )
    return url


def explain_unavailable(error: StoreError, url: str) -> StoreError:
    """``error``, with what to do when PostgreSQL wants a password that ``url`` lacks
    (the record never keeps one)."""
    parsed = parse_url(url)
    if (
        error.code is not ErrorCode.STORE_UNAVAILABLE
        or parsed.get_backend_name() != "postgresql"
        or parsed.password
        or "password" not in str(error).lower()
    ):
        return error
    return StoreError(
        ErrorCode.STORE_UNAVAILABLE,
        f"{error} (the URL has no password, and the data directory's record never keeps "
        "one: give it in --db or in the PGPASSWORD environment variable, or ~/.pgpass)",
    )


# --- waiting for the database at start-up ---------------------------------------------


async def while_unreachable(
    attempt: Callable[[], Awaitable[T]],
    *,
    wait: float,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``await attempt()``, tried again while it raises ``STORE_UNAVAILABLE``, for at most
    ``wait`` seconds (0: once).

    Pauses start at 0.5 s and double up to 10 s, each scaled by a random factor in
    [0.5, 1) so that coordinators restarted together do not retry in step, and never past
    the deadline; each attempt that fails logs a WARNING with the reason and the pause.
    When ``wait`` runs out, raises ``STORE_UNAVAILABLE`` with the last reason and the time
    waited. Any other error propagates at once. ``clock``, ``jitter`` (in [0, 1)) and
    ``sleep`` are for tests.
    """
    started = clock()
    delay = _FIRST_RETRY_S
    attempts = 0
    while True:
        attempts += 1
        try:
            return await attempt()
        except StoreError as error:
            if error.code is not ErrorCode.STORE_UNAVAILABLE:
                raise
            left = started + wait - clock()
            if left <= 0:
                raise StoreError(
                    ErrorCode.STORE_UNAVAILABLE,
                    f"{error}; gave up after {attempts} attempt(s) in {clock() - started:.1f} s "
                    f"(--db-wait {wait:g})",
                ) from error
            pause = min(left, delay * (0.5 + jitter() / 2))
            log.warning(
                "the database cannot be reached (attempt %d): %s; trying again in %.1f s "
                "(for at most %g s in all, --db-wait)",
                attempts,
                error,
                pause,
                wait,
            )
            await sleep(pause)
            delay = min(delay * 2, _MAX_RETRY_S)

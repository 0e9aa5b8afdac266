"""Engines and transactions for the SQL store, and the translation of database errors.

``Database`` owns one SQLAlchemy engine. ``Database.transaction(write=...)`` yields an ORM
session inside one transaction: it commits when the block ends, rolls back when it
raises, and turns every database error into a ``StoreError`` with a code:

=====================================================  ====================
connection refused, lost or timed out, SQLite busy       ``STORE_UNAVAILABLE``
missing table or column (the schema is older)            ``SCHEMA_OUTDATED``
unique or foreign-key violation                           ``CONFLICT``
a value the column cannot hold (naive datetime, ...)      ``INVALID_ARGUMENT``
anything else from SQLAlchemy                             ``INTERNAL``
=====================================================  ====================

Other exceptions (``StoreError`` raised by the store itself, or whatever an
``issue_certificate`` callback raises) pass through unchanged, after the rollback.

SQLite (a file; in-memory databases are refused, since every connection would see its own
empty database): WAL journal, foreign keys on, a busy timeout, and transactions that SQLite
begins itself, not the ``sqlite3`` module: ``BEGIN IMMEDIATE`` for a write transaction, so
it takes the write lock before its first read and a read-then-write cannot lose an update,
and a deferred ``BEGIN`` for a read. PostgreSQL: pre-pinged pooled connections with a
connect timeout; transactions are READ COMMITTED and the store locks the rows it checks
(``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from coordinator.errors import ErrorCode, StoreError

__all__ = [
    "SQLITE_BUSY_TIMEOUT_S",
    "UPGRADE_COMMAND",
    "Database",
    "create_store_engine",
    "default_sqlite_url",
    "describe_url",
    "parse_url",
    "translate_errors",
]

UPGRADE_COMMAND = "fedadamw-coordinator db upgrade --data-dir DIR [--db URL]"
"""The command that brings a database to the code's schema, named in every refusal."""

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite writer waits for another's lock before giving up (STORE_UNAVAILABLE)."""

POSTGRES_CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt may take, unless the URL says otherwise."""

_WRITE = "fedadamw_write"  # execution option: this transaction will write
_SQLITE_SCHEMA_ERRORS = ("no such table", "no such column")
_POSTGRES_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})  # undefined table / column


def default_sqlite_url(data_dir: Path) -> str:
    """The URL of the default database: ``coordinator.db`` in the data directory."""
    return f"sqlite:///{(Path(data_dir) / 'coordinator.db').resolve()}"


def parse_url(url: str) -> URL:
    """Parse a database URL; ``INVALID_ARGUMENT`` if it is not one this store supports.

    A bare ``postgresql://`` URL means psycopg 3 (``postgresql+psycopg://``).
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise StoreError(ErrorCode.INVALID_ARGUMENT, f"not a database URL: {error}") from error
    if parsed.drivername == "postgresql":  # no driver named: the one the extra installs
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
            raise StoreError(
                ErrorCode.INVALID_ARGUMENT,
                "an in-memory SQLite database cannot be shared by the store's connections; "
                "give a file, e.g. sqlite:///path/to/coordinator.db",
            )
    elif backend != "postgresql":
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT,
            f"unsupported database {backend!r}: use sqlite:///FILE or "
            "postgresql+psycopg://USER@HOST:PORT/DB",
        )
    return parsed


def describe_url(url: URL) -> str:
    """Where a database is, for messages: backend, host and database, never the password."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database}"
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    return f"PostgreSQL database {url.database!r} at {where} as user {url.username!r}"


def create_store_engine(url: str | URL) -> Engine:
    """An engine set up as the module docstring describes. Connects lazily.

    Raises ``INVALID_ARGUMENT`` for an unsupported URL and ``STORE_UNAVAILABLE`` when the
    database driver is not installed.
    """
    parsed = parse_url(url) if isinstance(url, str) else url
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            _configure_sqlite(engine)
            return engine
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    except (ImportError, exc.NoSuchModuleError) as error:
        raise StoreError(
            ErrorCode.STORE_UNAVAILABLE,
            f"no driver for {describe_url(parsed)} ({error}); "
            "install the PostgreSQL extra: pip install 'fedadamw[postgres]'",
        ) from error


def _configure_sqlite(engine: Engine) -> None:
    """The pysqlite recipe: SQLite, not the ``sqlite3`` module, runs the transactions."""
    busy_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the module emits no BEGIN of its own
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = bool(connection.get_execution_options().get(_WRITE, False))
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database:
    """One engine and the transactions over it. Thread-safe; share one per process."""

    def __init__(self, url: str) -> None:
        self.url = parse_url(url)
        self.description = describe_url(self.url)
        self.engine = create_store_engine(self.url)
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        self._batch = threading.local()  # the session of this thread's open batch, if any

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Session]:
        """One transaction, committed when the block ends, rolled back if it raises.

        ``write=True`` for every transaction that may write (on SQLite it takes the write
        lock up front). Errors are translated as the module docstring says.

        Inside ``batch()`` on the same thread, the block is a savepoint of the batch's
        transaction instead: it is undone alone if it raises, and committed with the rest.
        """
        joined: Session | None = getattr(self._batch, "session", None)
        if joined is not None:
            with translate_errors(self.url), joined.begin_nested():
                yield joined
            return
        session = Session(bind=self._write_engine if write else self.engine)
        try:
            with translate_errors(self.url), session.begin():
                yield session
        finally:
            session.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One write transaction that every ``transaction()`` this thread opens in the block
        joins, committed when the block ends (one commit for many writes). A failed commit
        raises, and then nothing of the block is stored."""
        if getattr(self._batch, "session", None) is not None:
            yield  # already in a batch: join it
            return
        with self.transaction(write=True) as session:
            self._batch.session = session
            try:
                yield
            finally:
                self._batch.session = None

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A Core connection in one write transaction (for migrations), like ``transaction``."""
        with translate_errors(self.url), self._write_engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        """Close the pooled connections; a later transaction opens new ones."""
        self.engine.dispose()


@contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Turn SQLAlchemy errors raised in the block into ``StoreError``s (see module doc)."""
    try:
        yield
    except exc.SQLAlchemyError as error:
        raise store_error(error, url) from error


def store_error(error: exc.SQLAlchemyError, url: URL) -> StoreError:
    """The ``StoreError`` for a SQLAlchemy error against the database at ``url``."""
    where = describe_url(url)
    detail = _detail(error, url)
    if isinstance(error, exc.DBAPIError):
        if _is_schema_error(error):
            return StoreError(
                ErrorCode.SCHEMA_OUTDATED,
                f"the {where} lacks part of the schema ({detail}); run `{UPGRADE_COMMAND}`",
            )
        if isinstance(error, exc.IntegrityError):
            return StoreError(
                ErrorCode.CONFLICT, f"the {where} refused a conflicting write: {detail}"
            )
        if isinstance(error, exc.DataError):
            return StoreError(ErrorCode.INVALID_ARGUMENT, f"the {where} refused a value: {detail}")
        if error.connection_invalidated or isinstance(
            error, exc.OperationalError | exc.InterfaceError
        ):
            return StoreError(ErrorCode.STORE_UNAVAILABLE, f"the {where} is unavailable: {detail}")
    elif isinstance(error, exc.StatementError) and isinstance(error.orig, ValueError | TypeError):
        return StoreError(ErrorCode.INVALID_ARGUMENT, f"a value cannot be stored: {detail}")
    return StoreError(ErrorCode.INTERNAL, f"the {where} failed: {detail}")


def _is_schema_error(error: exc.DBAPIError) -> bool:
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate in _POSTGRES_SCHEMA_SQLSTATES:
        return True
    message = str(error.orig).lower()
    return isinstance(error, exc.OperationalError) and any(
        marker in message for marker in _SQLITE_SCHEMA_ERRORS
    )


def _detail(error: exc.SQLAlchemyError, url: URL) -> str:
    """The driver's own message, first line only, with any password scrubbed."""
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    if url.password:
        line = line.replace(str(url.password), "***")
    return line

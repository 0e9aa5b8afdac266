"""The session wrapper: URLs, SQLite's settings and transactions, and how database
failures become ``StoreError``s."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, text

from coordinator.errors import ErrorCode
from coordinator.store import schema, session
from coordinator.store.session import Database, default_sqlite_url
from coordinator.store.sql import SqlStore
from coordinator.store.tables import ParticipantRow

from .factories import raises_code

STORE_SOURCES = sorted(
    [*Path(session.__file__).parent.glob("*.py"), *schema.MIGRATIONS_DIR.rglob("*.py")]
)


def test_default_sqlite_url_is_coordinator_db_in_the_data_dir(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve() / 'coordinator.db'}"
    schema.upgrade(url)
    store = SqlStore.open(url)
    try:
        assert store.list_clients() == []
    finally:
        store.close()
    assert (tmp_path / "coordinator.db").is_file()


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "mysql://root@localhost/db", "not a url"]
)
def test_unsupported_urls_are_refused(url: str) -> None:
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: SqlStore(url))


def test_a_bare_postgresql_url_means_psycopg_3() -> None:
    database = Database("postgresql://coordinator@db.internal:5433/fedadamw")
    try:
        assert database.engine.dialect.driver == "psycopg"
        assert database.description == (
            "PostgreSQL database 'fedadamw' at db.internal:5433 as user 'coordinator'"
        )
    finally:
        database.dispose()


def test_an_unreachable_database_is_unavailable_and_its_password_stays_secret() -> None:
    url = "postgresql+psycopg://fedadamw:s3cret-pw@127.0.0.1:1/coordinator?connect_timeout=3"
    store = SqlStore(url)
    try:
        for call in (store.check_schema, store.list_clients, store.open_round):
            error = raises_code(ErrorCode.STORE_UNAVAILABLE, call)
            assert "127.0.0.1:1" in str(error)
            assert "s3cret-pw" not in str(error)
    finally:
        store.close()
    error = raises_code(ErrorCode.STORE_UNAVAILABLE, lambda: schema.current_revision(url))
    assert "s3cret-pw" not in str(error)
    raises_code(ErrorCode.STORE_UNAVAILABLE, lambda: schema.upgrade(url))


def test_sqlite_runs_wal_with_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with database.engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            busy_ms = pragma("PRAGMA busy_timeout").scalar()
            assert busy_ms == int(session.SQLITE_BUSY_TIMEOUT_S * 1000)
    finally:
        database.dispose()


def test_sqlite_writes_begin_immediate_and_reads_deferred(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'c.db'}")
    begins: list[str] = []

    @event.listens_for(database.engine, "before_cursor_execute")
    def _seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("BEGIN"):
            begins.append(statement)

    try:
        with database.transaction(write=True) as writing:
            writing.execute(text("SELECT 1"))
        with database.transaction(write=False) as reading:
            reading.execute(text("SELECT 1"))
    finally:
        database.dispose()
    assert begins == ["BEGIN IMMEDIATE", "BEGIN"]


def test_a_sqlite_writer_that_waits_too_long_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    schema.upgrade(url)
    monkeypatch.setattr(session, "SQLITE_BUSY_TIMEOUT_S", 0.05)
    holder, waiter = Database(url), Database(url)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.transaction(write=True) as held:
            held.execute(text("SELECT 1"))
            locked.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(timeout=30)
        error = raises_code(ErrorCode.STORE_UNAVAILABLE, lambda: _write(waiter))
        assert "locked" in str(error)
    finally:
        release.set()
        thread.join(timeout=30)
        holder.dispose()
        waiter.dispose()


def _write(database: Database) -> None:
    with database.transaction(write=True) as writing:
        writing.execute(text("SELECT 1"))


def test_constraint_violations_become_conflicts_and_roll_back(backend_url: str) -> None:
    database = Database(backend_url)
    try:
        row = ParticipantRow(
            round_id="no-such-round", secagg_id=1, client_id=1, status="selected",
            input_complete=False,
        )  # fmt: skip
        error = raises_code(ErrorCode.CONFLICT, lambda: _insert(database, row))
        assert "refused" in str(error)
        with database.transaction(write=False) as reading:
            assert reading.query(ParticipantRow).count() == 0
    finally:
        database.dispose()


def _insert(database: Database, row: object) -> None:
    with database.transaction(write=True) as writing:
        writing.add(row)


def test_the_store_never_imports_protobuf() -> None:
    for path in STORE_SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(alias.name for alias in node.names)]
            bad = [n for n in names if n.endswith("_pb2") or "protobuf" in n or "grpc" in n]
            assert not bad, f"{path} imports {bad}"

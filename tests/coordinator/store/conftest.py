"""Backends for the store's contract suite: every test that takes ``store`` (or
``backend_url``) runs once on SQLite and once on PostgreSQL.

- SQLite: a temporary file, migrated once per run with ``schema.upgrade`` and copied for
  each test, so every test starts from an empty, migrated database.
- PostgreSQL: ``$FEDADAMW_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
  Each run creates its own schema ``fedadamw_test_<random>``, reached through the
  ``search_path`` connect option in the URL, migrates it once and drops it at the end;
  each test starts from emptied tables. Concurrent runs and leftovers never meet.
  Unreachable, its tests are skipped with the URL as the reason, or fail when ``CI=true``;
  ``FEDADAMW_TEST_PG_URL=none`` (or empty) turns them off.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from coordinator.store import schema
from coordinator.store.sql import SqlStore
from coordinator.store.tables import metadata

PG_URL_ENV = "FEDADAMW_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")


def pg_server_url() -> str:
    return os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)


def with_search_path(url: str, schema_name: str) -> str:
    """``url`` whose connections use ``schema_name`` first (libpq's ``options``)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema_name}')}"


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server URL, once it answered; skip (or fail under CI) if it cannot."""
    url = pg_server_url()
    if url.strip().lower() in ("", "none", "off"):
        pytest.skip(f"PostgreSQL tests are off (${PG_URL_ENV}={url!r})")
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        message = f"PostgreSQL at {_shown(url)} (${PG_URL_ENV}) is unreachable: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


class PgSchemas:
    """Creates throwaway schemas on the server and drops them all at the end."""

    def __init__(self, server_url: str) -> None:
        self._engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
        self._server_url = server_url
        self._created: list[str] = []

    def create(self) -> str:
        """A new empty schema; returns a URL whose connections work in it."""
        name = f"fedadamw_test_{secrets.token_hex(6)}"
        with self._engine.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
        self._created.append(name)
        return with_search_path(self._server_url, name)

    def drop_all(self) -> None:
        with self._engine.connect() as connection:
            for name in self._created:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        self._engine.dispose()


@pytest.fixture(scope="session")
def pg_schemas(pg_server: str) -> Iterator[PgSchemas]:
    schemas = PgSchemas(pg_server)
    yield schemas
    schemas.drop_all()


class PgMigrated:
    """One schema migrated once per run; ``empty()`` clears its tables between tests."""

    def __init__(self, url: str) -> None:
        self.url = url
        schema.upgrade(url)
        self._engine = create_engine(url)
        # DELETE, children first: on a few rows far quicker than TRUNCATE's new files.
        self._deletes = [
            text(f'DELETE FROM "{table.name}"') for table in reversed(metadata.sorted_tables)
        ]

    def empty(self) -> None:
        with self._engine.begin() as connection:
            for delete in self._deletes:
                connection.execute(delete)

    def close(self) -> None:
        self._engine.dispose()


@pytest.fixture(scope="session")
def pg_migrated(pg_schemas: PgSchemas) -> Iterator[PgMigrated]:
    migrated = PgMigrated(pg_schemas.create())
    yield migrated
    migrated.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file to copy (its WAL is checkpointed away on close)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "coordinator.db"
    schema.upgrade(f"sqlite:///{path}")
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database at the head revision, on the test's backend."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "coordinator.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    migrated: PgMigrated = request.getfixturevalue("pg_migrated")
    migrated.empty()
    return migrated.url


@pytest.fixture
def empty_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a database with nothing in it (never migrated), on the test's backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    schemas: PgSchemas = request.getfixturevalue("pg_schemas")
    return schemas.create()


@pytest.fixture
def store(backend_url: str) -> Iterator[SqlStore]:
    opened = SqlStore(backend_url)
    yield opened
    opened.close()


@pytest.fixture
def second_store(backend_url: str) -> Iterator[SqlStore]:
    """Another store on the same database, as a second coordinator replica would have."""
    opened = SqlStore(backend_url)
    yield opened
    opened.close()

"""The Alembic migrations produce exactly the declared schema, go back down, and the store
refuses a database that is not at the head revision (every backend)."""

from __future__ import annotations

import importlib.util
import re

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from coordinator.errors import ErrorCode, StoreError
from coordinator.store import schema
from coordinator.store.session import UPGRADE_COMMAND, Database
from coordinator.store.sql import SqlStore
from coordinator.store.tables import metadata

from .factories import raises_code

VERSION_FILE = re.compile(r"(?P<revision>\d{8}_\d{4})_[a-z0-9_]+\.py")


def _tables(url: str) -> set[str]:
    database = Database(url)
    try:
        with database.engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        database.dispose()


def test_upgrade_produces_exactly_the_declared_schema(empty_url: str) -> None:
    assert schema.current_revision(empty_url) is None
    assert schema.upgrade(empty_url) == schema.head_revision()
    assert schema.current_revision(empty_url) == schema.head_revision()
    database = Database(empty_url)
    try:
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            inspector = inspect(connection)
            assert set(inspector.get_table_names()) == {*metadata.tables, "alembic_version"}
            one_running = {ix["name"]: ix for ix in inspector.get_indexes("rounds")}
            assert one_running["uq_rounds_one_running"]["unique"]
    finally:
        database.dispose()
    assert schema.upgrade(empty_url) == schema.head_revision()  # again: nothing to do


def test_downgrade_to_base_leaves_no_tables(empty_url: str) -> None:
    schema.upgrade(empty_url)
    assert schema.downgrade(empty_url, "base") is None
    assert _tables(empty_url) <= {"alembic_version"}
    assert schema.upgrade(empty_url) == schema.head_revision()  # and back up
    assert _tables(empty_url) == {*metadata.tables, "alembic_version"}


def test_check_schema_refuses_an_empty_database(empty_url: str) -> None:
    store = SqlStore(empty_url)
    try:
        error = raises_code(ErrorCode.SCHEMA_OUTDATED, store.check_schema)
        assert UPGRADE_COMMAND in str(error)
        assert "fedadamw-coordinator db upgrade --data-dir DIR [--db URL]" in str(error)
        # A store used anyway meets the missing tables with the same advice.
        error = raises_code(ErrorCode.SCHEMA_OUTDATED, store.list_clients)
        assert UPGRADE_COMMAND in str(error)
    finally:
        store.close()
    with pytest.raises(StoreError, match="db upgrade"):
        SqlStore.open(empty_url)


def test_check_schema_refuses_an_older_or_unknown_revision(empty_url: str) -> None:
    schema.upgrade(empty_url)
    schema.downgrade(empty_url, "base")  # as old as it gets
    store = SqlStore(empty_url)
    try:
        error = raises_code(ErrorCode.SCHEMA_OUTDATED, store.check_schema)
        assert UPGRADE_COMMAND in str(error)
        schema.upgrade(empty_url)
        store.check_schema()
        database = Database(empty_url)
        try:
            with database.engine.begin() as connection:
                connection.execute(text("UPDATE alembic_version SET version_num = '99991231_9999'"))
        finally:
            database.dispose()
        error = raises_code(ErrorCode.SCHEMA_OUTDATED, store.check_schema)
        assert "99991231_9999" in str(error)
    finally:
        store.close()


def test_migration_files_are_dated_reversible_and_linear() -> None:
    files = sorted(
        path for path in (schema.MIGRATIONS_DIR / "versions").glob("*.py")
        if path.name != "__init__.py"
    )  # fmt: skip
    assert files
    previous: str | None = None
    for path in files:
        match = VERSION_FILE.fullmatch(path.name)
        assert match, f"{path.name} is not <YYYYMMDD>_<nnnn>_<slug>.py"
        spec = importlib.util.spec_from_file_location(f"migration_{path.stem}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.revision == match["revision"]
        assert module.down_revision == previous, f"{path.name} does not follow {previous}"
        assert callable(module.upgrade)
        assert callable(module.downgrade)
        previous = module.revision
    assert previous == schema.head_revision()
    assert (schema.MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (schema.MIGRATIONS_DIR / "env.py").is_file()

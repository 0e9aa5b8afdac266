"""The store's schema revisions: Alembic, configured in code, no ``alembic.ini``.

The migrations live in the ``coordinator/migrations`` package directory (``env.py``,
``script.py.mako`` and ``versions/<YYYYMMDD>_<nnnn>_<slug>.py``), found next to this
package, so they work from an installed wheel. A revision migrates inside one transaction
(``BEGIN IMMEDIATE`` on SQLite), so a failed upgrade leaves the database as it was.

- ``upgrade(url)`` brings a database to the head revision (an empty one included);
- ``current_revision(url)`` / ``head_revision()`` say where it is and where it should be;
- ``require_head`` is ``Store.check_schema``: ``SCHEMA_OUTDATED`` naming the command.

Creating a new revision (developers, from the repository root), after changing
``coordinator.store.tables``::

    .venv/bin/python -c "from coordinator.store.schema import revision; \\
        revision('sqlite:////tmp/scratch.db', 'what changed')"

writes ``versions/<YYYYMMDD>_<nnnn>_what_changed.py``. Review both directions (and write
SQLite-safe batch operations), then run the migration test, which compares the migrated
database with ``coordinator.store.tables`` on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from coordinator.errors import ErrorCode, StoreError
from coordinator.store.session import UPGRADE_COMMAND, Database, translate_errors

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "require_head",
    "revision",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(connection: Connection | None = None, *, url: str | None = None) -> Config:
    """An Alembic configuration over the package's migrations.

    With ``connection``, ``env.py`` migrates on it, inside its transaction; otherwise it
    opens ``url``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision this code's schema is at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise StoreError(ErrorCode.INTERNAL, f"no migrations in {MIGRATIONS_DIR}")
    return head


def current_revision(url: str) -> str | None:
    """The database's revision, or None for an empty (never migrated) database.

    Raises ``STORE_UNAVAILABLE`` if it cannot be reached.
    """
    database = Database(url)
    try:
        return _revision_of(database)
    finally:
        database.dispose()


def upgrade(url: str, revision: str = "head") -> str:
    """Migrate the database at ``url`` up to ``revision``; returns the revision it is at.

    Raises ``STORE_UNAVAILABLE`` if it cannot be reached.
    """
    reached = _migrate(url, lambda config: command.upgrade(config, revision))
    if reached is None:
        raise StoreError(ErrorCode.INTERNAL, f"upgrading to {revision} left no revision")
    return reached


def downgrade(url: str, revision: str) -> str | None:
    """Migrate down to ``revision`` (``"base"``: drop every table); returns where it is."""
    return _migrate(url, lambda config: command.downgrade(config, revision))


def revision(url: str, message: str, *, today: date | None = None) -> str:
    """Autogenerate the next revision from the difference between the database at ``url``
    (upgraded to head first) and ``coordinator.store.tables``; returns its revision id.

    The file is ``versions/<YYYYMMDD>_<nnnn>_<slug>.py`` (``nnnn`` counts revisions), with
    the revision id ``<YYYYMMDD>_<nnnn>``. For developers: review both directions.
    """
    upgrade(url)
    script = ScriptDirectory.from_config(alembic_config())
    number = sum(1 for _ in script.walk_revisions()) + 1
    revision_id = f"{(today or datetime.now(UTC).date()):%Y%m%d}_{number:04d}"
    database = Database(url)
    try:
        with database.write_connection() as connection:
            config = alembic_config(connection)
            config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
            command.revision(config, message=message, autogenerate=True, rev_id=revision_id)
    finally:
        database.dispose()
    return revision_id


def require_head(database: Database) -> None:
    """``SCHEMA_OUTDATED`` unless ``database`` is at the head revision (see module doc)."""
    current = _revision_of(database)
    head = head_revision()
    if current == head:
        return
    where = database.description
    if current is None:
        state = "has no coordinator schema (an empty database)"
    elif _is_known(current):
        state = f"is at schema revision {current}, older than this coordinator's {head}"
    else:
        raise StoreError(
            ErrorCode.SCHEMA_OUTDATED,
            f"the {where} is at schema revision {current}, which this coordinator does not "
            f"know (it needs {head}): a newer coordinator migrated it; run that version",
        )
    raise StoreError(ErrorCode.SCHEMA_OUTDATED, f"the {where} {state}; run `{UPGRADE_COMMAND}`")


def _migrate(url: str, run: Callable[[Config], None]) -> str | None:
    database = Database(url)
    try:
        with database.write_connection() as connection:
            run(alembic_config(connection))
        return _revision_of(database)
    finally:
        database.dispose()


def _revision_of(database: Database) -> str | None:
    with translate_errors(database.url), database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _is_known(revision_id: str) -> bool:
    script = ScriptDirectory.from_config(alembic_config())
    return any(rev.revision == revision_id for rev in script.walk_revisions())

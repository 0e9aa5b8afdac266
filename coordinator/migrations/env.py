"""Alembic's entry point for the coordinator's store, run by ``coordinator.store.schema``.

Online, it migrates on the connection that ``schema`` passes in
``config.attributes["connection"]``, inside that connection's transaction; given only a
URL (``sqlalchemy.url``), it opens the store's own engine (with its SQLite settings).
Offline (``--sql``), it renders the SQL for the configured URL.

SQLite cannot alter most constraints in place, so on SQLite operations run in batch mode
(copy and move the table).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from coordinator.store.session import Database
from coordinator.store.tables import metadata

config = context.config


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    database = Database(url)
    try:
        with database.write_connection() as opened:
            _configure_and_run(opened)
    finally:
        database.dispose()


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

"""The coordinator's data directory and its database, for the service and the admin commands.

Kept free of torch and gRPC so that admin commands start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from coordinator.errors import CoordinatorError
from coordinator.store import Store
from coordinator.store.schema import current_revision, upgrade
from coordinator.store.sql import SqlStore, default_sqlite_url

__all__ = ["database_url", "open_store", "prepare_data_dir"]


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory 0700 (or narrow an existing one to 0700)."""
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

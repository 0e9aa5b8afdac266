"""The fault tests' run starts the fault matrix afresh (``tests/faults/matrix.py``), and
the ``backend`` fixture: None for SQLite in the data directory, or the URL of a fresh
PostgreSQL schema (dropped afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.harness import drop_postgres_schema, postgres_schema_or_skip
from tests.faults.matrix import matrix_path


def pytest_configure(config: pytest.Config) -> None:
    # once per run: in pytest-xdist's controller, not again in each worker
    if not hasattr(config, "workerinput"):
        matrix_path().unlink(missing_ok=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    schema = f"crash_{uuid.uuid4().hex[:10]}"
    url = postgres_schema_or_skip(schema)
    yield url
    drop_postgres_schema(schema)

"""The admin commands use the database the data directory's service uses, and create none.

``fedadamw-coordinator run`` records its database in ``DIR/database.json`` (the URL without
its password); ``token create``, ``status``, ``export``, ``clients list``, ``clients
revoke`` and ``db upgrade`` use that record when ``--db`` is not given, refuse a ``--db``
naming another database, and fail with exit code 2, creating nothing, on a directory that
is not a coordinator's. A data directory from before the record (``coordinator.db`` and no
record) still works.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.store import schema
from coordinator.store.sql import SqlStore, default_sqlite_url
from edge_client.session import Outcome

from .harness import (
    BIN,
    FAST,
    Coordinator,
    TestAgent,
    drop_postgres_schema,
    postgres_schema_or_skip,
)
from .test_dropouts import Known

RECORD = "database.json"
NOT_A_DATA_DIR = "is not a coordinator data directory"


def _admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fedadamw-coordinator"), *args], capture_output=True, text=True, timeout=120
    )


def _commands(data_dir: Path, out: Path) -> list[list[str]]:
    where = ["--data-dir", str(data_dir)]
    return [
        ["token", "create", *where],
        ["status", *where],
        ["export", "--out", str(out), *where],
        ["clients", "list", *where],
        ["clients", "revoke", "1", *where],
        ["db", "upgrade", *where],
    ]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_mistyped_data_dir_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "coordinatr"
    for command in _commands(missing, tmp_path / "model.pt"):
        result = _admin(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"{missing} {NOT_A_DATA_DIR}" in result.stderr, (command, result.stderr)
        assert "fedadamw-coordinator run --data-dir" in result.stderr
        assert "Traceback" not in result.stderr
        assert _tree(tmp_path) == [], command


def test_a_directory_without_a_database_is_refused_and_left_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in _commands(empty, tmp_path / "model.pt"):
        result = _admin(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"{empty} {NOT_A_DATA_DIR}: no database record" in result.stderr, result.stderr
        assert "or pass --db" in result.stderr
        assert _tree(tmp_path) == ["empty"], command
    # An explicit SQLite --db that does not exist is not created either, not even by db upgrade.
    absent = tmp_path / "elsewhere.db"
    for command in _commands(empty, tmp_path / "model.pt"):
        result = _admin(*command, "--db", f"sqlite:///{absent}")
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert str(absent) in result.stderr
        assert "Traceback" not in result.stderr
        assert _tree(tmp_path) == ["empty"], command


def test_a_data_dir_from_before_the_record_still_works(tmp_path: Path) -> None:
    """A SQLite file and no record: the file is the record; the commands write no record."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    schema.upgrade(default_sqlite_url(data))
    before = _tree(data)
    where = ["--data-dir", str(data)]
    token = _admin("token", "create", *where)
    assert token.returncode == 0, token.stderr
    store = SqlStore(default_sqlite_url(data))
    try:
        assert store.list_clients() == []
    finally:
        store.close()
    status = _admin("status", *where)
    assert status.returncode == 0, status.stderr
    assert "no model yet" in status.stdout
    assert "already at revision" in _admin("db", "upgrade", *where).stdout
    assert not (data / RECORD).exists()
    assert set(_tree(data)) - set(before) <= {"coordinator.db-wal", "coordinator.db-shm"}


def test_run_on_sqlite_records_its_database(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, FAST)
    coordinator.start()
    try:
        record = json.loads((coordinator.data_dir / RECORD).read_text())
        assert record["url"] == default_sqlite_url(coordinator.data_dir)
        assert stat.S_IMODE((coordinator.data_dir / RECORD).stat().st_mode) == 0o600
        elsewhere = tmp_path / "other.db"
        schema.upgrade(f"sqlite:///{elsewhere}")
        refused = coordinator.cli("status", "--db", f"sqlite:///{elsewhere}", check=False)
        assert refused.returncode == 2
        assert str(elsewhere) in refused.stderr
        assert str(coordinator.data_dir / "coordinator.db") in refused.stderr
    finally:
        coordinator.stop()


@pytest.fixture(scope="module")
def on_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """A coordinator serving on PostgreSQL, started with a password in its --db URL."""
    schema_name = f"admin_{uuid.uuid4().hex[:10]}"
    url = postgres_schema_or_skip(schema_name)
    # Trust authentication accepts any password; what matters is that it is never stored.
    url = url.replace("postgresql+psycopg://postgres@", "postgresql+psycopg://postgres:secret@")
    assert ":secret@" in url
    root = tmp_path_factory.mktemp("admin-pg")
    coordinator = Coordinator(
        root, {**FAST, "cohort": 3, "min_clients": 3, "rounds": 2}, db_url=url
    )
    coordinator.start()
    try:
        yield coordinator
    finally:
        coordinator.stop()
        drop_postgres_schema(schema_name)


def _bare(coordinator: Coordinator, *args: str) -> subprocess.CompletedProcess[str]:
    """An admin command with only --data-dir: no --db."""
    return _admin(*args, "--data-dir", str(coordinator.data_dir))


def test_the_record_names_postgres_without_the_password(on_postgres: Coordinator) -> None:
    path = on_postgres.data_dir / RECORD
    text = path.read_text()
    assert "secret" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    url = json.loads(text)["url"]
    assert on_postgres.db_url is not None
    assert url == on_postgres.db_url.replace(":secret@", "@")


def test_tokens_made_without_db_enroll_agents_that_run_a_round(
    on_postgres: Coordinator, tmp_path: Path
) -> None:
    made = _bare(on_postgres, "token", "create", "--count", "3")
    assert made.returncode == 0, made.stderr
    tokens = made.stdout.split()
    assert len(tokens) == 3
    assert not (on_postgres.data_dir / "coordinator.db").exists()

    async def scenario() -> None:
        agents = [await TestAgent.enrolled(on_postgres, tmp_path, token=t) for t in tokens]
        try:
            results = await asyncio.gather(*(a.run_round(Known(i)) for i, a in enumerate(agents)))
            assert [r.outcome for r in results] == [Outcome.COMMITTED] * 3
        finally:
            for agent in agents:
                await agent.close()

    asyncio.run(scenario())
    status = _bare(on_postgres, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["model_version"] == 1
    assert [(r["round"], r["outcome"]) for r in report["rounds"] if r["round"] == 0] == [
        (0, "committed")
    ]
    listing = _bare(on_postgres, "clients", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)) == 3
    export = _bare(on_postgres, "export", "--out", str(tmp_path / "model.pt"))
    assert export.returncode == 0, export.stderr
    assert "already at revision" in _bare(on_postgres, "db", "upgrade").stdout
    assert not (on_postgres.data_dir / "coordinator.db").exists()


def test_a_db_naming_another_database_is_refused(on_postgres: Coordinator, tmp_path: Path) -> None:
    assert on_postgres.db_url is not None
    other = on_postgres.db_url.replace("search_path%3Dadmin_", "search_path%3Dother_")
    recorded = on_postgres.db_url.replace(":secret@", "@")
    for args in (["status"], ["token", "create"], ["db", "upgrade"], ["clients", "list"]):
        result = _bare(on_postgres, *args, "--db", other)
        assert result.returncode == 2, (args, result.stderr)
        assert "other_" in result.stderr
        assert recorded.split("?")[0] in result.stderr
        assert "secret" not in result.stderr
    sqlite = _bare(on_postgres, "status", "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert sqlite.returncode == 2
    assert not (tmp_path / "x.db").exists()
    # The same database with another (or no) password is the same database.
    for same in (on_postgres.db_url.replace(":secret@", ":other@"), recorded):
        result = _bare(on_postgres, "status", "--db", same)
        assert result.returncode == 0, result.stderr

"""``fedadamw-coordinator``'s admin commands against a real data directory."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch

from coordinator.round_settings import RoundSettings
from coordinator.store.schema import upgrade
from coordinator.store.sql import default_sqlite_url
from edge_client.session import Outcome
from fedadamw.tasks.models import DigitsCNN

from .harness import BIN, FAST, Coordinator, TestAgent
from .test_dropouts import Known


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Coordinator:
    """A coordinator that committed one round with three agents, then stopped."""
    root = tmp_path_factory.mktemp("cli")
    coordinator = Coordinator(root, {**FAST, "cohort": 3, "min_clients": 3})
    coordinator.start()
    try:

        async def scenario() -> None:
            agents = await TestAgent.many(coordinator, root, 3)
            try:
                results = await asyncio.gather(
                    *(a.run_round(Known(i)) for i, a in enumerate(agents))
                )
                assert [r.outcome for r in results] == [Outcome.COMMITTED] * 3
            finally:
                for a in agents:
                    await a.close()

        asyncio.run(scenario())
    finally:
        coordinator.stop()
    return coordinator


def test_status_json_describes_the_run(ran: Coordinator) -> None:
    status = json.loads(ran.cli("status", "--json").stdout)  # the command itself
    assert status["model_version"] == 1
    assert isinstance(status["test_accuracy"], float)
    (round0,) = status["rounds"]
    assert {k: round0[k] for k in ("round", "outcome", "cohort", "survivors")} == {
        "round": 0,
        "outcome": "committed",
        "cohort": 3,
        "survivors": 3,
    }
    assert [p["phase"] for p in round0["phases"]] == [
        "advertise_keys",
        "share_keys",
        "masked_input",
        "consistency_check",
        "unmasking",
    ]
    assert all(p["alive"] == 3 for p in round0["phases"])
    # The defaults choose t = 2 over the complete graph for three clients, on a 2^32 ring:
    # what the round stored, ran with and logged.
    assert round0["secure_aggregation"] == {"threshold": 2, "degree": None, "ring_bits": 32}
    with sqlite3.connect(ran.data_dir / "coordinator.db") as db:
        (stored,) = db.execute(
            "SELECT config FROM rounds WHERE round_id = ?", (round0["round_id"],)
        ).fetchone()
    settings = RoundSettings.from_json(stored)
    assert round0["secure_aggregation"] == {
        "threshold": settings.threshold,
        "degree": settings.degree,
        "ring_bits": settings.layout.ring_bits,
    }
    assert "secure aggregation (t=2, k=complete, ring 2^32)" in ran.log()
    text = ran.cli("status").stdout
    assert "model version 1" in text
    assert "secure aggregation" in text.splitlines()[2]  # the table's header
    (row,) = [line for line in text.splitlines() if line.split()[:2] == ["0", "committed"]]
    assert "t=2 k=complete ring=2^32" in row


def test_clients_list_and_revoke(ran: Coordinator) -> None:
    listing = ran.cli("clients", "list").stdout
    assert len(listing.strip().splitlines()) == 4  # header and three clients
    assert "revoked at" in ran.cli("clients", "revoke", "2").stdout
    import json

    rows = json.loads(ran.cli("clients", "list", "--json").stdout)
    assert [r["revoked_at"] is not None for r in rows] == [False, True, False]
    missing = ran.cli("clients", "revoke", "99", check=False)
    assert missing.returncode == 2
    assert "99" in missing.stderr


def test_export_writes_a_loadable_state_dict(ran: Coordinator, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    assert "model version 1 written" in ran.cli("export", "--out", str(out)).stdout
    model = DigitsCNN()
    model.load_state_dict(torch.load(out))
    assert ran.cli("export", "--version", "0", "--out", str(tmp_path / "v0.pt")).returncode == 0
    bad = ran.cli("export", "--version", "7", "--out", str(tmp_path / "v7.pt"), check=False)
    assert bad.returncode == 2
    assert "version 7" in bad.stderr or "not found" in bad.stderr.lower()


def test_tokens_and_their_errors(ran: Coordinator) -> None:
    tokens = ran.cli("token", "create", "--count", "3", "--ttl", "2h").stdout.split()
    assert len(set(tokens)) == 3
    bad = ran.cli("token", "create", "--ttl", "soon", check=False)
    assert bad.returncode == 2
    assert "24h" in bad.stderr  # the error shows an example


def test_db_upgrade_is_idempotent(ran: Coordinator) -> None:
    assert "already at revision" in ran.cli("db", "upgrade").stdout


def test_run_refuses_a_schema_it_does_not_know(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    upgrade(default_sqlite_url(data))  # `db upgrade` migrates a database; it creates none
    with sqlite3.connect(data / "coordinator.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '29990101_0099'")
    result = subprocess.run(
        [
            str(BIN / "fedadamw-coordinator"),
            "run",
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "29990101_0099" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_explains_every_command() -> None:
    for args in (
        ["--help"],
        ["run", "--help"],
        ["token", "create", "--help"],
        ["status", "--help"],
    ):
        result = subprocess.run(
            [str(BIN / "fedadamw-coordinator"), *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0
        assert "usage: fedadamw-coordinator" in result.stdout

"""A database that is not up yet when the coordinator starts is waited for, not fatal.

``fedadamw-coordinator run`` retries a database it cannot reach at start-up, with jittered
exponential backoff and a WARNING per attempt, for at most ``--db-wait`` seconds. Once the
database answers it serves as usual; if it never does, the process exits with code 1 (not
2, which tells a supervisor not to restart it) so that the supervisor starts it again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.test_leader import Instance
from tests.faults.test_store_outage import Relay

from .harness import drop_postgres_schema, free_port, postgres_schema_or_skip

EXIT_DATABASE_UNAVAILABLE = 1
RETRYING = "trying again in"


@pytest.fixture
def late_postgres() -> Iterator[tuple[str, Relay]]:
    """A URL of a fresh schema, reached through a relay that refuses connections until the
    test calls ``restore``."""
    schema = f"startup_{uuid.uuid4().hex[:10]}"
    url = postgres_schema_or_skip(schema)
    relay = Relay(("127.0.0.1", 5432))
    relay.cut()
    assert "127.0.0.1:5432" in url
    yield url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}"), relay
    relay.close()
    drop_postgres_schema(schema)


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and RETRYING in line]


def test_the_coordinator_waits_for_postgres_that_comes_up_late(
    tmp_path: Path, late_postgres: tuple[str, Relay]
) -> None:
    url, relay = late_postgres
    coordinator = Instance(tmp_path, db_url=url, extra=["--db-wait", "30"])
    coordinator.launch()
    try:
        coordinator.wait_log(RETRYING, timeout=20)
        time.sleep(3)  # a few attempts, refused
        assert coordinator.process is not None
        assert coordinator.process.poll() is None
        assert not coordinator.listening()
        relay.restore()
        coordinator._wait_healthy(30)
        warnings = _warnings(coordinator.log())
        assert len(warnings) >= 2, coordinator.log()
        assert all("127.0.0.1" in line and "--db-wait" in line for line in warnings), warnings
        # The token goes to the database the service waited for.
        assert coordinator.token()
    finally:
        coordinator.stop()
    assert coordinator.process.returncode == 0, coordinator.log()


def test_a_database_that_never_comes_ends_the_process_with_code_1(tmp_path: Path) -> None:
    nothing = free_port()  # nobody listens here
    url = f"postgresql+psycopg://postgres@127.0.0.1:{nothing}/test"
    coordinator = Instance(tmp_path, db_url=url, extra=["--db-wait", "3"])
    started = time.monotonic()
    coordinator.launch()
    try:
        code = coordinator.wait_exit(30)
    finally:
        coordinator.stop()
    log = coordinator.log()
    assert code == EXIT_DATABASE_UNAVAILABLE, log
    assert time.monotonic() - started < 30
    assert len(_warnings(log)) >= 2, log
    assert f"127.0.0.1:{nothing}" in log
    (error,) = [line for line in log.splitlines() if "fedadamw-coordinator: error:" in line]
    assert "--db-wait" in error, log
    assert "Traceback" not in log


def test_a_bad_db_wait_is_a_configuration_error(tmp_path: Path) -> None:
    coordinator = Instance(tmp_path, extra=["--db-wait", "-1"])
    coordinator.launch()
    try:
        code = coordinator.wait_exit(30)
    finally:
        coordinator.stop()
    assert code == 2, coordinator.log()
    assert "--db-wait" in coordinator.log()

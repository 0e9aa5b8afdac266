"""One leader (coordinator/leader.py), with real processes.

A second ``fedadamw-coordinator run`` on the same data directory (SQLite) or the same
PostgreSQL schema waits as a standby: it binds no port and names the leader's pid in its
log; it takes over within seconds when the leader dies (``kill -9``) or stops (SIGTERM),
and rounds then commit on it. ``--standby-timeout`` gives up with exit code 3; SIGTERM
ends a standby with 0. A leader whose PostgreSQL session dies takes the lock again at once
if it is free, and otherwise exits with code 4. A port another process holds, even with
``SO_REUSEPORT``, is an error, never shared.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from coordinator.leader import EXIT_LEADER_LOST, EXIT_STANDBY_TIMEOUT, advisory_key
from coordinator.leader import application_name as lock_application_name
from edge_client.session import Outcome
from tests.e2e.harness import (
    BIN,
    FAST,
    PG_URL,
    Coordinator,
    TestAgent,
    drop_postgres_schema,
    merged,
    postgres_schema_or_skip,
)
from tests.e2e.test_dropouts import Known
from tests.faults import matrix

SETTINGS = merged(FAST, cohort=3, min_clients=3)
STANDBY = "Waiting as a standby"
TAKEOVER_S = 10.0  # a standby polls every 0.5 s; then it opens the store and binds


class Instance(Coordinator):
    """The harness's coordinator, with extra flags, a data directory of the test's choice,
    and ``launch``, which does not wait for it to serve (a standby does not)."""

    def __init__(
        self,
        root: Path,
        *,
        data_dir: Path | None = None,
        db_url: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root, SETTINGS, db_url=db_url)
        if data_dir is not None:
            self.data_dir = data_dir
        self.extra = tuple(extra)

    def launch(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "fedadamw-coordinator"),
                    "run",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    self.address,
                    "--enroll-listen",
                    self.enroll_address,
                    "--metrics-port",
                    str(self.metrics_port),
                    "--config",
                    str(self.config),
                    *self._db_args(),
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def start(self, *, timeout: float = 60.0) -> None:
        self.launch()
        self._wait_healthy(timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} never logged:\n{self.log()}")
            time.sleep(0.1)

    def signal(self, sig: int, timeout: float = 60.0) -> int:
        """Send ``sig``; the exit code."""
        assert self.process is not None
        self.process.send_signal(sig)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.log()}") from None

    def listening(self) -> bool:
        return any(_listening(port) for port in (self.port, self.enroll_port, self.metrics_port))


def _listening(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _assert_standby(standby: Instance, leader: Instance) -> None:
    standby.wait_log(STANDBY)
    log = standby.log()
    assert f"pid {leader.pid} on host {socket.gethostname()}" in log, log
    assert log.count(STANDBY) == 1  # once at WARNING; reminders are INFO, every 60 s
    assert " WARNING coordinator.leader: another coordinator is the leader" in log
    assert "serving task" not in log
    assert not standby.listening()


def _take_over(standby: Instance) -> float:
    """Seconds until the standby serves."""
    started = time.monotonic()
    standby._wait_healthy(TAKEOVER_S)
    taken = time.monotonic() - started
    assert "took over as the leader" in standby.log()
    return taken


def _one_round(coordinator: Instance, root: Path) -> None:
    async def scenario() -> None:
        agents = await TestAgent.many(coordinator, root, 3)
        try:
            results = await asyncio.gather(*(a.run_round(Known(i)) for i, a in enumerate(agents)))
            assert [r.outcome for r in results] == [Outcome.COMMITTED] * 3, results
        finally:
            for a in agents:
                await a.close()

    asyncio.run(scenario())
    assert coordinator.status()["model_version"] == 1


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    started: list[Instance] = []
    yield started
    for instance in started:
        instance.stop()


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """A fresh schema: (its name, a URL whose connections use it)."""
    schema = f"leader_{uuid.uuid4().hex[:10]}"
    url = postgres_schema_or_skip(schema)
    yield schema, url
    drop_postgres_schema(schema)


def test_a_second_coordinator_on_the_data_dir_waits_then_takes_over_after_kill_9(
    tmp_path: Path, instances: list[Instance]
) -> None:
    leader = Instance(tmp_path / "a")
    instances.append(leader)
    leader.start()
    standby = Instance(tmp_path / "b", data_dir=leader.data_dir)
    instances.append(standby)
    standby.launch()
    _assert_standby(standby, leader)

    leader.kill()  # SIGKILL: the kernel drops the flock
    took = _take_over(standby)
    assert took < TAKEOVER_S
    _one_round(standby, tmp_path)
    matrix.record(
        "second coordinator",
        "started on the leader's data directory, then the leader killed -9",
        "between rounds",
        "standby served nothing; led after the kill; a round committed",
        f"standby named the holder; took over {took:.1f} s after the kill",
    )


def test_postgresql_standby_on_another_data_dir_takes_over_after_sigterm(
    tmp_path: Path, instances: list[Instance], pg_schema: tuple[str, str]
) -> None:
    _, url = pg_schema
    leader = Instance(tmp_path / "a", db_url=url)
    instances.append(leader)
    leader.start()
    standby = Instance(tmp_path / "b", db_url=url)
    instances.append(standby)
    # Blobs live in the data directory: shared here, as replicas would need them shared.
    standby.data_dir.mkdir(mode=0o700)
    (standby.data_dir / "blobs").symlink_to(leader.data_dir / "blobs")
    standby.launch()
    _assert_standby(standby, leader)
    assert "PostgreSQL database 'test'" in standby.log()

    assert leader.signal(signal.SIGTERM) == 0, leader.log()
    took = _take_over(standby)
    assert took < TAKEOVER_S
    _one_round(standby, tmp_path)
    matrix.record(
        "second coordinator",
        "on the same PostgreSQL database, another data directory; the leader stopped",
        "between rounds",
        "standby served nothing; led after SIGTERM; a round committed",
        f"advisory lock; took over {took:.1f} s after the leader exited",
        backend="postgresql",
    )


def _lock_backend(schema: str, instance: Instance) -> int:
    import psycopg

    name = lock_application_name(instance.pid, socket.gethostname())
    with psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute(
            "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
            "WHERE a.application_name = %s AND l.locktype = 'advisory' AND l.granted",
            (name,),
        ).fetchone()
    assert row is not None, f"no lock session for {name}"
    return int(row[0])


def _terminate(backend: int) -> None:
    import psycopg

    with psycopg.connect(
        PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone() == (True,)


def test_postgresql_lock_loss_retakes_at_once_or_exits_4(
    tmp_path: Path, instances: list[Instance], pg_schema: tuple[str, str]
) -> None:
    import psycopg

    schema, url = pg_schema
    leader = Instance(tmp_path / "a", db_url=url)
    instances.append(leader)
    leader.start()

    # The session dies and nobody else wants the lock: taken again on a new session.
    _terminate(_lock_backend(schema, leader))
    leader.wait_log("took the leader lock again at once", timeout=10)
    assert leader._healthy(leader.ca_pem)

    # The session dies while another waits for the lock: the other gets it, the leader exits.
    base = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as rival:
        rival_pid = rival.info.backend_pid
        holding = threading.Thread(
            target=lambda: rival.execute("SELECT pg_advisory_lock(%s)", (advisory_key(schema),))
        )
        holding.start()
        with psycopg.connect(base, autocommit=True) as probe:
            deadline = time.monotonic() + 10
            waiting = "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted"
            while probe.execute(waiting, (rival_pid,)).fetchone() != (1,):
                assert time.monotonic() < deadline, "the rival never waited for the lock"
                time.sleep(0.05)
        _terminate(_lock_backend(schema, leader))
        holding.join(timeout=10)
        assert not holding.is_alive()
        assert leader.wait_exit(timeout=30) == EXIT_LEADER_LOST
    log = leader.log()
    assert " ERROR coordinator.leader: lost the leader lock" in log, log
    assert "exit code 4" in log


def test_standby_timeout_exits_3_naming_the_holder_and_sigterm_ends_a_standby(
    tmp_path: Path, instances: list[Instance]
) -> None:
    leader = Instance(tmp_path / "a")
    instances.append(leader)
    leader.start()

    impatient = Instance(tmp_path / "b", data_dir=leader.data_dir, extra=("--standby-timeout", "2"))
    instances.append(impatient)
    started = time.monotonic()
    impatient.launch()
    assert impatient.wait_exit(timeout=60) == EXIT_STANDBY_TIMEOUT
    assert time.monotonic() - started >= 2
    log = impatient.log()
    assert "not the leader after 2 s as a standby (--standby-timeout)" in log, log
    assert f"held by pid {leader.pid}" in log

    patient = Instance(tmp_path / "c", data_dir=leader.data_dir)
    instances.append(patient)
    patient.launch()
    patient.wait_log(STANDBY)
    stopping = time.monotonic()
    assert patient.signal(signal.SIGTERM, timeout=10) == 0, patient.log()
    assert time.monotonic() - stopping < 5
    assert leader._healthy(leader.ca_pem)  # the leader is unaffected


@pytest.mark.parametrize(
    ("port_of", "refusal"),
    [("port", "cannot listen on"), ("metrics_port", "cannot serve /metrics on")],
)
def test_a_port_another_process_holds_is_an_error_not_shared(
    tmp_path: Path, instances: list[Instance], port_of: str, refusal: str
) -> None:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as holder:
        # SO_REUSEPORT on the holder's side: a listener that also set it would share the port.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        coordinator = Instance(tmp_path / "a")
        instances.append(coordinator)
        setattr(coordinator, port_of, port)
        coordinator.launch()
        assert coordinator.wait_exit(timeout=60) == 2
    log = coordinator.log()
    assert f"fedadamw-coordinator: error: {refusal} 127.0.0.1:{port}" in log, log
    assert "in use by another process" in log
    assert "Traceback" not in log, log

"""PostgreSQL goes away in the middle of a round and comes back: nothing acknowledged is lost.

The coordinator reaches PostgreSQL through a TCP relay on loopback that the test can cut
(open connections are reset and new ones refused) and restore, which is what a database
restart or a network fault looks like from the coordinator. The relay spares, when asked,
the session that holds the leader lock (found through ``pg_locks``). Two scenarios cut it
while the agents send their unmask shares, across the phase's close:

* When only the store's connections die (the leader lock's session survives), the driver
  says so (ERROR log, the stalled gauge, NOT_SERVING), retries with backoff without
  exiting, and once the database is back resumes the round from what it had stored.
* When every connection dies, the leader lock's too, the coordinator can no longer prove it
  leads: it exits 4 for its supervisor, and the test, as the supervisor, starts it again
  once the database is back; the round resumes.

Either way the round commits the exact mean of every input and the next round commits.
A third scenario cuts the store's connections once in every phase, while half the cohort
sends its message: each outage is logged once when it begins and once when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from coordinator.blobs import BlobStore
from coordinator.domain import ParticipantStatus, RoundPhase
from coordinator.leader_postgres import advisory_key
from edge_client.session import Outcome, RoundSession
from tests.e2e.harness import (
    FAST,
    PG_URL,
    Coordinator,
    TestAgent,
    drop_postgres_schema,
    free_port,
    merged,
    postgres_schema_or_skip,
)
from tests.e2e.test_dropouts import Known
from tests.faults import matrix
from tests.faults.test_crash import STEPS, _gated, _store, _wait_durable, half_gated
from tests.faults.test_driver_faults import _health, _metric, _until
from wire.v1 import edge_pb2 as pb

FAILING = "WARNING coordinator.outages: the database is failing"
RECOVERED = "WARNING coordinator.outages: the database recovered after"

SETTINGS = merged(
    FAST,
    rounds=2,
    cohort=3,
    min_clients=3,
    deadlines={
        "advertise_keys": 60,
        "share_keys": 60,
        "masked_input": 60,
        "consistency_check": 60,
        "unmasking": 60,
        "restart_grace": 30,
    },
)


def _local_port(conn: socket.socket) -> int | None:
    try:
        return int(conn.getsockname()[1])
    except OSError:
        return None


def lock_session_port(schema: str) -> int:
    """The ``client_port`` of the PostgreSQL session that holds the leader lock of a
    coordinator on ``schema`` (the lock's own connection, ``coordinator.leader_postgres``)."""
    import psycopg

    unsigned = advisory_key(schema) & 0xFFFF_FFFF_FFFF_FFFF
    with psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s",
            (unsigned >> 32, unsigned & 0xFFFF_FFFF),
        ).fetchone()
    assert row is not None, f"no session holds the leader lock of schema {schema!r}"
    return int(row[0])


class Relay:
    """Forwards loopback TCP connections on ``port`` to ``target``; ``cut`` and ``restore``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()  # it binds the port again after each cut
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self, *, spare_port: int | None = None) -> None:
        """Refuse new connections and reset the open ones, all but the one whose upstream
        end has local port ``spare_port`` (PostgreSQL's ``client_port`` for that session)."""
        assert self._listener is not None
        # shutdown() wakes the thread blocked in accept(); close() alone would leave that
        # accept() listening, and the next connection would slip through the cut.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._listener = None
        with self._lock:
            spared = [pair for pair in self._open if _local_port(pair[1]) == spare_port]
            if spare_port is not None:
                assert spared, f"no relayed connection has upstream port {spare_port}"
            for pair in self._open:
                if pair in spared:
                    continue
                for conn in pair:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self._open = spared

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def close(self) -> None:
        if not self.is_cut:
            self.cut()


@pytest.fixture
def relayed_postgres() -> Iterator[tuple[str, Relay, str]]:
    """The URL of a fresh schema reached through a relay, the relay, and the schema."""
    schema = f"outage_{uuid.uuid4().hex[:10]}"
    url = postgres_schema_or_skip(schema)
    relay = Relay(("127.0.0.1", 5432))
    assert "127.0.0.1:5432" in PG_URL
    yield url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}"), relay, schema
    relay.close()
    drop_postgres_schema(schema)


def _scenario(
    tmp_path: Path, relayed: tuple[str, Relay, str], *, whole_database: bool
) -> tuple[Coordinator, list[Known]]:
    url, relay, schema = relayed
    # Only the store's connections lost: the driver stalls when the unmasking deadline
    # comes and it cannot close the phase; a short deadline brings that sooner.
    settings = SETTINGS if whole_database else merged(SETTINGS, deadlines={"unmasking": 20})
    coordinator = Coordinator(tmp_path, settings, db_url=url)
    coordinator.start()
    try:

        async def scenario() -> list[Known]:
            agents = await TestAgent.many(coordinator, tmp_path, 3)
            gates = {pb.PHASE_UNMASKING: asyncio.Event()}
            updates = [Known(i) for i in range(3)]
            try:
                assignments = await asyncio.gather(*(a.assignment() for a in agents))
                runs = [
                    asyncio.ensure_future(a.session(assignment, u, _gated(gates)).run())
                    for a, assignment, u in zip(agents, assignments, updates, strict=True)
                ]
                ids = {a.credentials.client_id for a in agents}
                await asyncio.to_thread(
                    _wait_durable, coordinator, RoundPhase.UNMASKING, ParticipantStatus.SIGNED, ids
                )
                relay.cut(spare_port=None if whole_database else lock_session_port(schema))
                gates[pb.PHASE_UNMASKING].set()
                if whole_database:
                    await asyncio.to_thread(_lost_its_lock_and_exited, coordinator)
                    relay.restore()
                    await asyncio.to_thread(coordinator.start)  # as its supervisor would
                else:
                    await asyncio.to_thread(_stalled_loudly_then_recovers, coordinator, relay)
                results = await asyncio.gather(*runs)
                assert [r.outcome for r in results] == [Outcome.COMMITTED] * 3, results
                assert _metric(coordinator, "fedadamw_round_driver_stalled") == 0
                assert await asyncio.to_thread(_health, coordinator) == (
                    health_pb2.HealthCheckResponse.SERVING
                )
                again = await asyncio.gather(
                    *(a.run_round(Known(10 + i), RoundSession) for i, a in enumerate(agents))
                )
                assert [r.outcome for r in again] == [Outcome.COMMITTED] * 3, again
                if not whole_database:  # said once nothing was refused for a while
                    await asyncio.to_thread(
                        _until, lambda: RECOVERED in coordinator.log(), "recovery", coordinator
                    )
            finally:
                for a in agents:
                    await a.close()
            return updates

        return coordinator, asyncio.run(scenario())
    finally:
        if relay.is_cut:
            relay.restore()
        coordinator.stop()


def _stalled_loudly_then_recovers(coordinator: Coordinator, relay: Relay) -> None:
    def stalled() -> bool:
        return _metric(coordinator, "fedadamw_round_driver_stalled") == 1

    # the driver stalls at the phase deadline (20 s after the phase opened), not before
    _until(stalled, "a stalled driver", coordinator, timeout=90)
    assert _health(coordinator) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert "round driver: StoreError" in coordinator.log()
    time.sleep(3)  # across retries: still stalled, and not a hot loop
    faults = _metric(coordinator, "fedadamw_round_driver_faults_total")
    assert 1 <= faults <= 6, faults
    assert coordinator.process is not None
    assert coordinator.process.poll() is None  # it waits; it does not exit
    relay.restore()


def _lost_its_lock_and_exited(coordinator: Coordinator) -> None:
    assert coordinator.process is not None
    code = coordinator.process.wait(timeout=60)
    assert code == 4, coordinator.log()[-3000:]
    assert "no longer the leader" in coordinator.log()


def _check_committed(coordinator: Coordinator, updates: list[Known], cohort: int = 3) -> None:
    store = _store(coordinator)
    blobs = BlobStore(coordinator.data_dir / "blobs")
    try:
        versions = store.list_versions()
        assert [v.version for v in versions] == [0, 1, 2]
        x0, x1 = (blobs.read_array(v.model_sha256, "<f4").astype(np.float64) for v in versions[:2])
        rounds = store.list_rounds()
        assert [r.outcome.value for r in rounds] == ["committed", "committed"]
        assert rounds[0].survivors == cohort
    finally:
        store.close()
    np.testing.assert_allclose(
        x1, x0 + np.mean([u.sent["delta"] for u in updates], axis=0), atol=2e-6
    )


def test_store_connections_lost_across_a_phase_close_stall_loudly_then_resume(
    tmp_path: Path, relayed_postgres: tuple[str, Relay, str]
) -> None:
    """The store's connections die and new ones are refused; the leader lock's session
    survives (a pooler restart, a network blip towards the database)."""
    coordinator, updates = _scenario(tmp_path, relayed_postgres, whole_database=False)
    log = coordinator.log()
    assert "round driver: recovered after" in log
    # the requests refused meanwhile: one WARNING when it began, one when it ended
    assert log.count(FAILING) == 1, log[-4000:]
    assert log.count(RECOVERED) == 1
    assert "refused (store_unavailable)" not in log  # not once per request
    _check_committed(coordinator, updates)
    matrix.record(
        "database stopped",
        "the store's connections reset and refused (the lock's session lives)",
        "unmasking (across its close)",
        "committed 3/3, exact mean; the next round too",
        "driver stalled (ERROR, NOT_SERVING), one WARNING at the start and one at recovery",
        backend="postgresql",
    )


def test_postgres_down_across_a_phase_close_the_leader_exits_and_its_restart_resumes(
    tmp_path: Path, relayed_postgres: tuple[str, Relay, str]
) -> None:
    """Every connection dies, the leader lock's too: the coordinator can no longer prove it
    leads, so it exits 4 for its supervisor; restarted once the database is back, it resumes
    the round with every acknowledged input. The agents reach the restarted coordinator
    within seconds however long it was down (their channels cap gRPC's reconnection backoff,
    ``edge_client.retry.CHANNEL_OPTIONS``), well inside its ``restart_grace``."""
    coordinator, updates = _scenario(tmp_path, relayed_postgres, whole_database=True)
    assert coordinator.starts == 2
    assert "resumed round 0" in coordinator.log()
    _check_committed(coordinator, updates)
    matrix.record(
        "database stopped",
        "every connection reset and refused, the leader lock's too",
        "unmasking (across its close)",
        "committed 3/3 after a restart, exact mean; the next round too",
        "the coordinator exited 4 (lock lost); restarted, 'resumed round 0'",
        backend="postgresql",
    )


def _said_once_then_healed(coordinator: Coordinator, relay: Relay, cuts: int) -> None:
    """During cut number ``cuts``: one WARNING that the database fails, the gauge at 1 and
    the process alive while agents are refused; after the relay is restored, one WARNING
    that it recovered."""

    def said(line: str, times: int) -> bool:
        return coordinator.log().count(line) >= times

    _until(lambda: said(FAILING, cuts), f"outage warning {cuts}", coordinator)
    time.sleep(2)  # refusals go on meanwhile: they are counted, not logged one by one
    log = coordinator.log()
    assert log.count(FAILING) == cuts, log[-4000:]
    assert log.count(RECOVERED) == cuts - 1, log[-4000:]
    assert _metric(coordinator, 'fedadamw_dependency_failing{dependency="database"}') == 1
    assert coordinator.process is not None
    assert coordinator.process.poll() is None
    relay.restore()
    _until(lambda: said(RECOVERED, cuts), f"recovery {cuts}", coordinator)
    assert _metric(coordinator, 'fedadamw_dependency_failing{dependency="database"}') == 0


def test_store_connections_lost_in_every_phase_the_round_rides_it_out(
    tmp_path: Path, relayed_postgres: tuple[str, Relay, str]
) -> None:
    """In each phase, once two of four agents' messages are durable, the store's connections
    are reset and refused (the leader lock's session lives) while the other two send theirs;
    then the database comes back. Each outage is said once when it begins and once when it
    ends, the agents retry with backoff, and the round commits the exact mean of all four."""
    url, relay, schema = relayed_postgres
    coordinator = Coordinator(tmp_path, merged(SETTINGS, cohort=4, min_clients=3), db_url=url)
    coordinator.start()
    try:

        async def scenario() -> list[Known]:
            agents = await TestAgent.many(coordinator, tmp_path, 4)
            gates = {phase: asyncio.Event() for phase, _, _ in STEPS}
            updates = [Known(i) for i in range(4)]
            try:
                runs, steady = await half_gated(agents, updates, gates)
                for cuts, (proto_phase, phase, status) in enumerate(STEPS, start=1):
                    await asyncio.to_thread(_wait_durable, coordinator, phase, status, steady)
                    relay.cut(spare_port=lock_session_port(schema))
                    gates[proto_phase].set()
                    await asyncio.to_thread(_said_once_then_healed, coordinator, relay, cuts)
                results = await asyncio.gather(*runs)
                assert [r.outcome for r in results] == [Outcome.COMMITTED] * 4, results
                again = await asyncio.gather(
                    *(a.run_round(Known(10 + i), RoundSession) for i, a in enumerate(agents))
                )
                assert [r.outcome for r in again] == [Outcome.COMMITTED] * 4, again
            finally:
                for a in agents:
                    await a.close()
            return updates

        updates = asyncio.run(scenario())
        assert coordinator.starts == 1  # the lock's session lived: no restart was needed
        assert "refused (store_unavailable)" not in coordinator.log()
        _check_committed(coordinator, updates, cohort=4)
    finally:
        if relay.is_cut:
            relay.restore()
        coordinator.stop()
    for _, phase, _ in STEPS:
        matrix.record(
            "database stopped",
            "the store's connections reset and refused once 2 of 4 messages are durable",
            phase.value,
            "committed 4/4, exact mean; the next round too",
            "one WARNING when each outage began and one when it ended; gauge 1 during it",
            backend="postgresql",
        )

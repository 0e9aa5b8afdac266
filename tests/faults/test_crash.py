"""``kill -9`` of the coordinator in every phase of a round, on SQLite and on PostgreSQL.

One round of four agents. In each phase, two agents send their message and two wait at a
gate; once the two messages are durable (the database says so), the coordinator is killed
with SIGKILL and started again on the same data directory. Then the gate opens. The agents
reconnect by themselves; the round resumes from the database and the spool, and commits
the mean of all four inputs: nothing acknowledged was lost, and nothing was summed twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from coordinator.blobs import BlobStore
from coordinator.domain import ParticipantStatus, RoundPhase
from coordinator.store.sql import SqlStore, default_sqlite_url
from edge_client.session import Outcome, RoundResult, RoundSession
from tests.e2e.harness import (
    FAST,
    Coordinator,
    TestAgent,
    merged,
)
from tests.e2e.test_dropouts import PHASE_OF_CALL, Known
from tests.faults import matrix
from wire.v1 import edge_pb2 as pb

T = TypeVar("T")

SETTINGS = merged(
    FAST,
    cohort=4,
    min_clients=3,
    deadlines={
        "advertise_keys": 90,
        "share_keys": 90,
        "masked_input": 90,
        "consistency_check": 90,
        "unmasking": 90,
        "restart_grace": 60,
    },
)

STEPS = [
    (pb.PHASE_ADVERTISE_KEYS, RoundPhase.ADVERTISE_KEYS, ParticipantStatus.ADVERTISED),
    (pb.PHASE_SHARE_KEYS, RoundPhase.SHARE_KEYS, ParticipantStatus.SHARED),
    (pb.PHASE_MASKED_INPUT, RoundPhase.MASKED_INPUT, ParticipantStatus.UPLOADED),
    (pb.PHASE_CONSISTENCY_CHECK, RoundPhase.CONSISTENCY_CHECK, ParticipantStatus.SIGNED),
    (pb.PHASE_UNMASKING, RoundPhase.UNMASKING, ParticipantStatus.UNMASKED),
]


class GatedSession(RoundSession):
    """Waits at ``gates[phase]`` (if set for it) before sending its message for that phase."""

    gates: ClassVar[dict[int, asyncio.Event]] = {}

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        phase = PHASE_OF_CALL.get(what)
        if phase in self.gates:
            await self.gates[phase].wait()
        return await super()._call(what, call)

    async def _upload(self, config: pb.RoundConfig, vector: np.ndarray) -> None:
        if pb.PHASE_MASKED_INPUT in self.gates:
            await self.gates[pb.PHASE_MASKED_INPUT].wait()
        await super()._upload(config, vector)


def _gated(gates: dict[int, asyncio.Event]) -> type[GatedSession]:
    return type("Gated", (GatedSession,), {"gates": gates})


async def half_gated(
    agents: list[TestAgent], updates: list[Known], gates: dict[int, asyncio.Event]
) -> tuple[list[asyncio.Future[RoundResult]], set[int]]:
    """The agents' next round started: the even ones send at once, the odd ones wait at
    ``gates`` before each phase's message. The runs, and the steady agents' client ids."""
    assignments = await asyncio.gather(*(a.assignment() for a in agents))
    runs = [
        asyncio.ensure_future(
            a.session(assignment, u, RoundSession if i % 2 == 0 else _gated(gates)).run()
        )
        for i, (a, assignment, u) in enumerate(zip(agents, assignments, updates, strict=True))
    ]
    return runs, {a.credentials.client_id for i, a in enumerate(agents) if i % 2 == 0}


def _store(coordinator: Coordinator) -> SqlStore:
    return SqlStore(coordinator.db_url or default_sqlite_url(coordinator.data_dir))


def _wait_durable(
    coordinator: Coordinator,
    phase: RoundPhase,
    status: ParticipantStatus,
    ids: set[int],
    timeout: float = 90,
) -> str:
    """Wait until the open round is in ``phase`` and ``ids``' messages for it are stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = _store(coordinator)
        try:
            open_round = store.open_round()
            if open_round is not None and open_round.phase is phase:
                participants = store.list_participants(open_round.round_id)
                done = {p.client_id for p in participants if p.status is status}
                if ids <= done:
                    return open_round.round_id
        finally:
            store.close()
        time.sleep(0.2)
    raise TimeoutError(f"phase {phase} never held {ids} as {status}:\n{coordinator.log()[-3000:]}")


def test_kill_9_in_every_phase_loses_nothing(tmp_path: Path, backend: str | None) -> None:
    coordinator = Coordinator(tmp_path, SETTINGS, db_url=backend)
    coordinator.start()
    try:

        async def scenario() -> list[Known]:
            agents = await TestAgent.many(coordinator, tmp_path, 4)
            gates = {phase: asyncio.Event() for phase, _, _ in STEPS}
            updates = [Known(i) for i in range(4)]
            try:
                runs, steady = await half_gated(agents, updates, gates)
                round_ids = set()
                for proto_phase, phase, status in STEPS:
                    round_ids.add(
                        await asyncio.to_thread(_wait_durable, coordinator, phase, status, steady)
                    )
                    await asyncio.to_thread(coordinator.kill)
                    await asyncio.to_thread(coordinator.start)
                    gates[proto_phase].set()
                results = await asyncio.gather(*runs)
                assert [r.outcome for r in results] == [Outcome.COMMITTED] * 4, results
                assert len(round_ids) == 1  # the same round all along
            finally:
                for a in agents:
                    await a.close()
            return updates

        updates = asyncio.run(scenario())
        assert coordinator.starts == 1 + len(STEPS)
        store = _store(coordinator)
        blobs = BlobStore(coordinator.data_dir / "blobs")
        try:
            versions = store.list_versions()
            assert [v.version for v in versions] == [0, 1]
            x0, x1 = (blobs.read_array(v.model_sha256, "<f4").astype(np.float64) for v in versions)
            (round_,) = store.list_rounds()
            assert round_.survivors == 4
        finally:
            store.close()
        np.testing.assert_allclose(
            x1, x0 + np.mean([u.sent["delta"] for u in updates], axis=0), atol=2e-6
        )
        status = coordinator.status()
        assert status["model_version"] == 1
        assert [r["outcome"] for r in status["rounds"]] == ["committed"]
        assert "resumed round 0" in coordinator.log()
        assert not any((coordinator.data_dir / "spool").iterdir())  # inputs freed after the round
        for _, phase, _ in STEPS:
            matrix.record(
                "coordinator SIGKILL",
                "kill -9 once 2 of 4 messages are durable; restarted on the same data",
                phase.value,
                "committed 4/4, the same round, exact mean",
                "'resumed round 0' in the log; agents reconnected by themselves; spool freed",
                backend="postgresql" if backend else "sqlite",
            )
    finally:
        coordinator.stop()

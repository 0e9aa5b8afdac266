"""The round driver behind the round machine, in process, with faults injected on demand.

A ``RoundMachine`` runs on a real SQLite store, blob store and spool in ``tmp_path``, with
the smallest built-in task (``digits-cnn``, built as ``coordinator/server.py`` builds its
``ModelState``), a settable clock, a seeded rng and a sleep that records the driver's
backoff. ``SimAgent``s (``roundkit``) play the edge agents through the machine's calls,
their messages parsed into records as the servicer parses them. The store (``FailingStore``),
the blob store and the spool fail on demand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.active_round import ActiveRound
from coordinator.config import CoordinatorConfig, Deadlines
from coordinator.domain import PHASE_ORDER, RoundOutcome, RoundPhase, phase_rank
from coordinator.driver import DriverStage, RoundDriver
from coordinator.errors import BlobError, CoordinatorError, ErrorCode, StoreError
from coordinator.listener import ObservingListener
from coordinator.metrics import Metrics
from coordinator.model_state import ModelState
from coordinator.reasons import Dropped, RoundAbortReason
from coordinator.round_machine import RetryAfter, RoundMachine
from coordinator.round_state import RoundEvent
from coordinator.store.sql import SqlStore
from fedadamw.algorithms import get_algorithm
from fedadamw.tasks import load_task
from secure_agg import DropReason
from secure_agg.signing import identity_public_bytes
from tests.coordinator.roundkit import (
    Clock,
    FailingBlobStore,
    FailingSpool,
    FailingStore,
    FakeSleep,
    RecordingListener,
    SimAgent,
    StateRound,
    expected_sums,
    identity_key,
    migrated_template,
    small_config,
    until,
)
from tests.coordinator.store.factories import enroll

CHUNK = 32_768  # ring elements per upload chunk: digits-cnn's 76,568 make three chunks
ROUND_TIMEOUT = 120.0
TRANSITIONS = [p for p in PHASE_ORDER if p is not RoundPhase.UNMASKING]
_AGENT_NUMBERS = itertools.count(1)


def config_for(**overrides: Any) -> CoordinatorConfig:
    overrides.setdefault("chunk_elements", CHUNK)
    return small_config(**overrides)


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("driver-db"))


@pytest.fixture
def db_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "coordinator.db"
    path.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{path}"


@dataclasses.dataclass(eq=False)
class Coordinator:
    """One coordinator process, in process: the machine and the parts it runs on."""

    machine: RoundMachine
    store: FailingStore
    blobs: FailingBlobStore
    spool: FailingSpool
    model: ModelState
    listener: RecordingListener
    metrics: Metrics
    sleep: FakeSleep
    clock: Clock
    health: list[bool]

    @classmethod
    def build(
        cls, root: Path, url: str, config: CoordinatorConfig, *, seed: int = 0
    ) -> Coordinator:
        store = FailingStore(SqlStore(url))
        blobs = FailingBlobStore(root / "blobs")
        spool = FailingSpool(root / "spool")
        model = ModelState(
            task=load_task(config.task),
            algorithm=get_algorithm(config.algorithm),
            blobs=blobs,
            seed=config.seed,
        )
        metrics = Metrics()
        listener = RecordingListener(ObservingListener(metrics))
        clock = Clock()
        machine = RoundMachine(
            store=store,
            blobs=blobs,
            spool=spool,
            model=model,
            config=config,
            metrics=metrics,
            clock=clock,
            rng=random.Random(seed),
            listener=listener,
        )
        sleep = FakeSleep(probe=lambda: machine.serving)
        machine.driver.sleep = sleep
        health: list[bool] = []
        machine.on_health = health.append
        return cls(machine, store, blobs, spool, model, listener, metrics, sleep, clock, health)

    @property
    def driver(self) -> RoundDriver:
        return self.machine.driver

    def agents(self, count: int, **behaviours: dict[str, Any]) -> list[SimAgent]:
        """``count`` newly enrolled agents; ``behaviours["a3"]`` configures the third."""
        made = []
        for i in range(1, count + 1):
            label = f"agent-{next(_AGENT_NUMBERS)}"
            key = identity_key(label)
            client = enroll(self.store.inner, label, key=identity_public_bytes(key))
            made.append(SimAgent(client, key, seed=i, **behaviours.get(f"a{i}", {})))
        return made

    async def settle(self) -> None:
        """Wait until the driver has finished training (and evaluating): what it records
        after the agents learn the outcome (a recovery, say) is recorded by then."""
        await asyncio.wait_for(self.machine.idle.wait(), timeout=60)
        await self.driver.finish_evaluations(timeout=60)

    async def close(self) -> None:
        """Stop the machine and close the store."""
        try:
            await self.machine.stop()
        finally:
            self.store.inner.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=240))


async def check_in(machine: RoundMachine, agents: Sequence[SimAgent]) -> None:
    await asyncio.gather(*(a.check_in(machine) for a in agents))
    assert len({a.round_id for a in agents}) == 1
    assert sorted(a.secagg_id for a in agents) == list(range(1, len(agents) + 1))


async def play_round(machine: RoundMachine, agents: Sequence[SimAgent]) -> list[Any]:
    """Check the agents in, run them to the round's end; their final events."""
    await check_in(machine, agents)
    return await asyncio.wait_for(
        asyncio.gather(*(a.run(machine) for a in agents)), timeout=ROUND_TIMEOUT
    )


async def stop_agents(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel the agents' tasks (a crash of the agents' connections, as far as the
    coordinator can tell); each must end at once."""
    for task in tasks:
        task.cancel()
    if tasks:
        _, running = await asyncio.wait(tasks, timeout=10)
        assert not running, f"agent tasks ignored their cancellation: {running}"


def assert_committed(results: Sequence[Any], agents: Sequence[SimAgent], version: int) -> None:
    for agent, result in zip(agents, results, strict=True):
        assert isinstance(result, RoundEvent), f"client {agent.client_id}: {agent.stopped}"
        assert result.outcome is RoundOutcome.COMMITTED
        assert result.model_version == version


def assert_sums_of(c: Coordinator, agents: Sequence[SimAgent], *, commits: int = 1) -> None:
    """The one commit's sums are exactly the decoded sum of these agents' inputs."""
    committed = c.listener.of("committed")
    assert len(committed) == commits
    _, stored_version, sums = committed[-1]
    settings = agents[0].settings
    assert settings is not None
    encoded = [a.encoded for a in agents]
    assert all(e is not None for e in encoded)
    expected = expected_sums(settings.layout, encoded)  # type: ignore[arg-type]
    assert sums.survivors == len(agents) == stored_version.num_clients
    np.testing.assert_array_equal(sums.delta, expected["delta"])
    np.testing.assert_array_equal(sums.second_moment, expected["second_moment"])
    assert sums.weight == pytest.approx(float(len(agents)))
    plain = np.sum([a.values["delta"] for a in agents if a.values is not None], axis=0)
    assert float(np.max(np.abs(sums.delta - plain))) < 1e-5


def fault_calls(c: Coordinator) -> list[tuple[Any, ...]]:
    return c.listener.of("driver_fault")


def assert_one_fault_then_recovered(c: Coordinator, stage: DriverStage, error_type: type) -> Any:
    """One fault at ``stage``: reported, backed off, NOT_SERVING meanwhile, recovered."""
    faults = fault_calls(c)
    assert len(faults) == 1, faults
    fault_stage, _, error, delay, count = faults[0]
    assert (fault_stage, count) == (stage, 1)
    assert isinstance(error, error_type)
    assert c.sleep.delays == [delay]
    assert 0.5 <= delay <= 1.0  # the first retry: uniform in [cap/2, cap], cap 1 s
    assert c.sleep.seen == [False]  # not serving while it waited
    assert c.health == [False, True]
    assert c.listener.of("driver_recovered") == [(1,)]
    names = c.listener.names()
    assert names.index("driver_fault") < names.index("driver_recovered")
    # recovered at the first durable transition after the fault, before agents hear of it
    after = names[names.index("driver_fault") :]
    moved = [i for i, n in enumerate(after) if n in ("phase_closed", "committed", "aborted")]
    assert moved, names
    assert after.index("driver_recovered") < moved[0], names
    assert c.machine.serving
    assert c.metrics.registry.get_sample_value("fedadamw_round_driver_stalled") == 0.0
    return error


def next_round(agents: Sequence[SimAgent]) -> list[SimAgent]:
    """The same agents (client, key), ready for another round."""
    return [SimAgent(a.client, a.key, seed=a.seed + 100) for a in agents]


# --- rounds that go as planned -----------------------------------------------------------


def test_two_secure_rounds_commit_through_the_machine(tmp_path: Path, db_url: str) -> None:
    config = config_for(rounds=2)

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            assert c.listener.of("initial_version_stored")[0][1] == c.model.layout.size
            first = c.agents(5)
            assert_committed(await play_round(c.machine, first), first, 1)
            assert_sums_of(c, first)
            second = next_round(first)
            assert_committed(await play_round(c.machine, second), second, 2)
            assert_sums_of(c, second, commits=2)
            await c.settle()
            late = await c.machine.check_in(first[0].client, task=config.task, wait=0)
            assert isinstance(late, RetryAfter)
            assert late.reason == "training finished"

            store = c.store.inner
            assert [v.version for v in store.list_versions()] == [0, 1, 2]
            rounds = sorted(store.list_rounds(), key=lambda r: r.number)
            assert [r.outcome for r in rounds] == [RoundOutcome.COMMITTED] * 2
            assert [r.survivors for r in rounds] == [5, 5]
            assert rounds[0].round_id == first[0].round_id
            assert store.get_version(1).round_id == first[0].round_id
            assert store.get_version(2).round_id == second[0].round_id
            assert store.get_version(2).global_step > store.get_version(1).global_step
            for round_ in rounds:
                timings = store.list_phase_timings(round_.round_id)
                assert [t.phase for t in timings] == list(PHASE_ORDER)
            assert store.open_round() is None
            assert c.spool.rounds() == []  # each round's spool goes when it ends

            names = c.listener.names()
            assert names.count("round_started") == 2
            assert names.count("phase_closed") == 8
            assert [d.new_phase for _, d, _ in c.listener.of("phase_closed")[:4]] == list(
                PHASE_ORDER[1:]
            )
            assert names.count("unmasked") == 2
            assert c.listener.of("round_ended") == [
                (RoundOutcome.COMMITTED, 5, 0.0),
                (RoundOutcome.COMMITTED, 5, 0.0),
            ]
            assert c.listener.of("training_finished") == [(2,)]
            assert sorted(v.version for v, _ in c.listener.of("evaluated")) == [0, 1, 2]
            assert fault_calls(c) == []
            assert c.sleep.delays == []
            assert c.health == []
            assert c.machine.serving
        finally:
            await c.close()

    run(scenario)


def test_dropouts_within_the_threshold_are_recorded_and_the_round_commits(
    tmp_path: Path, db_url: str
) -> None:
    """Six agents (t = 3): 6 leaves in share_keys; 5 goes quiet in consistency_check, whose
    short deadline (real seconds) then drops it. Its input was summed: it stays in."""
    config = config_for(cohort=6, deadlines=Deadlines(consistency_check=3.0))

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            agents = c.agents(
                6,
                a5={"silent_at": RoundPhase.CONSISTENCY_CHECK},
                a6={"leave_at": RoundPhase.SHARE_KEYS},
            )
            results = await play_round(c.machine, agents)
            assert_committed(results[:4], agents[:4], 1)
            await c.settle()
            assert results[4:] == [None, None]
            assert agents[4].stopped == "silent in consistency_check"
            assert agents[5].stopped == "left in share_keys"
            assert_sums_of(c, agents[:5])

            stored = {p.client_id: p for p in c.store.list_participants(agents[0].round_id)}
            quiet, left = stored[agents[4].client_id], stored[agents[5].client_id]
            assert (left.dropped_in, left.drop_reason) == (
                RoundPhase.SHARE_KEYS,
                "client_aborted:cancelled",
            )
            assert (quiet.dropped_in, quiet.drop_reason) == (
                RoundPhase.CONSISTENCY_CHECK,
                "no_response",
            )
            assert quiet.input_complete
            assert (
                RoundPhase.CONSISTENCY_CHECK,
                {quiet.secagg_id: Dropped(DropReason.NO_RESPONSE)},
            ) in c.listener.of("dropped")
            assert c.store.get_round(agents[0].round_id).survivors == 5
        finally:
            await c.close()

    run(scenario)


def test_too_few_left_aborts_the_round_and_tells_the_rest(tmp_path: Path, db_url: str) -> None:
    config = config_for()

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            agents = c.agents(
                5,
                a4={"leave_at": RoundPhase.SHARE_KEYS},
                a5={"leave_at": RoundPhase.SHARE_KEYS},
            )
            results = await play_round(c.machine, agents)
            for result in results[:3]:
                assert isinstance(result, RoundEvent)
                assert result.outcome is RoundOutcome.ABORTED
                assert result.reason == RoundAbortReason.TOO_FEW_CLIENTS
                assert result.model_version == 0
            (round_, phase, reason) = c.listener.of("aborted")[0]
            assert (phase, reason) == (RoundPhase.SHARE_KEYS, RoundAbortReason.TOO_FEW_CLIENTS)
            assert c.store.get_round(round_.round_id).abort_reason == "too_few_clients"
            assert c.store.latest_version().version == 0  # no model version was written
            assert c.listener.of("committed") == []
            sample = c.metrics.registry.get_sample_value(
                "fedadamw_round_aborts_total",
                {"phase": "share_keys", "reason": "too_few_clients"},
            )
            assert sample == 1.0
        finally:
            await c.close()

    run(scenario)


def test_rounds_that_abort_in_a_row_are_spaced_by_a_growing_pause(
    tmp_path: Path, db_url: str
) -> None:
    """Rounds whose agents all leave at once abort back to back; from the second on, the
    next round waits (1 s, then 2 s, ... up to a minute), so they cannot loop hot; a commit
    ends the pauses."""
    config = config_for(rounds=1)
    leave = {f"a{i}": {"leave_at": RoundPhase.SHARE_KEYS} for i in range(1, 6)}

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            agents = c.agents(5)
            for _ in range(3):
                leaving = [
                    SimAgent(a.client, a.key, seed=a.seed + 100, **leave[f"a{i + 1}"])
                    for i, a in enumerate(agents)
                ]
                await play_round(c.machine, leaving)
            assert_committed(await play_round(c.machine, next_round(agents)), agents, 1)
            await c.settle()
            pauses = c.listener.of("aborts_in_a_row")
            assert [(count, reason) for count, reason, _ in pauses] == [
                (2, RoundAbortReason.TOO_FEW_CLIENTS),
                (3, RoundAbortReason.TOO_FEW_CLIENTS),
            ]
            first, second = (delay for _, _, delay in pauses)
            assert 0.5 <= first <= 1.0
            assert 1.0 <= second <= 2.0
            assert c.sleep.delays == [first, second]
            assert c.driver.aborted_in_a_row == 0
        finally:
            await c.close()

    run(scenario)


# --- store and blob faults in the driver -------------------------------------------------


@pytest.mark.parametrize("phase", TRANSITIONS)
def test_a_transition_the_store_refuses_once_is_retried_and_the_round_commits(
    phase: RoundPhase, tmp_path: Path, db_url: str
) -> None:
    config = config_for()

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            c.store.fail("advance_phase", after=PHASE_ORDER.index(phase))
            agents = c.agents(5)
            assert_committed(await play_round(c.machine, agents), agents, 1)
            await c.settle()
            error = assert_one_fault_then_recovered(c, DriverStage.CLOSE_PHASE, StoreError)
            assert error.code is ErrorCode.STORE_UNAVAILABLE
            assert c.store.raised == [("advance_phase", error)]
            assert c.listener.phases("driver_fault") == [phase]
            # the retry rebuilt the round from the store first, in the phase it was in
            assert c.listener.phases("round_resumed") == [phase]
            assert c.store.calls["advance_phase"] == len(TRANSITIONS) + 1
            # the watchers of the retired round were told to watch again
            assert any(e.code is ErrorCode.STORE_UNAVAILABLE for a in agents for e in a.errors)
            assert_sums_of(c, agents)
            timings = c.store.list_phase_timings(agents[0].round_id)
            assert [t.phase for t in timings] == list(PHASE_ORDER)
        finally:
            await c.close()

    run(scenario)


def test_a_commit_the_store_refuses_once_commits_exactly_once(tmp_path: Path, db_url: str) -> None:
    config = config_for()

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            c.store.fail("commit_round")
            agents = c.agents(5)
            assert_committed(await play_round(c.machine, agents), agents, 1)
            await c.settle()
            assert_one_fault_then_recovered(c, DriverStage.COMMIT, StoreError)
            assert c.store.calls["commit_round"] == 2
            assert [v.version for v in c.store.list_versions()] == [0, 1]
            assert c.store.get_version(1).round_id == agents[0].round_id
            assert c.listener.phases("round_resumed") == [RoundPhase.UNMASKING]
            assert_sums_of(c, agents)  # one commit, of every input
        finally:
            await c.close()

    run(scenario)


@pytest.mark.parametrize("failures", [1, 3])
def test_a_blob_write_failing_during_the_commit_is_retried_with_growing_backoff(
    failures: int, tmp_path: Path, db_url: str
) -> None:
    config = config_for()

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            c.blobs.fail_puts(failures)
            agents = c.agents(5)
            assert_committed(await play_round(c.machine, agents), agents, 1)
            await c.settle()
            faults = fault_calls(c)
            assert [(f[0], f[4]) for f in faults] == [
                (DriverStage.COMMIT, n) for n in range(1, failures + 1)
            ]
            assert all(isinstance(f[2], BlobError) for f in faults)
            assert c.sleep.delays == [f[3] for f in faults]
            for n, delay in enumerate(c.sleep.delays, start=1):
                cap = min(30.0, 2.0 ** (n - 1))
                assert cap / 2 <= delay <= cap
            assert c.sleep.seen == [False] * failures
            assert c.health == [False] * failures + [True]
            assert c.listener.of("driver_recovered") == [(failures,)]
            assert c.blobs.failed_puts == failures
            assert [v.version for v in c.store.list_versions()] == [0, 1]
            version = c.store.get_version(1)
            assert c.blobs.exists(version.model_sha256)
            assert c.blobs.exists(version.second_moment_sha256)
            assert_sums_of(c, agents)
        finally:
            await c.close()

    run(scenario)


def test_a_store_fault_while_opening_a_round_is_retried(tmp_path: Path, db_url: str) -> None:
    config = config_for()

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            c.store.fail("create_round")
            agents = c.agents(5)
            assert_committed(await play_round(c.machine, agents), agents, 1)
            await c.settle()
            error = assert_one_fault_then_recovered(c, DriverStage.OPEN_ROUND, StoreError)
            assert fault_calls(c)[0][1] is None  # no round was open
            assert error.code is ErrorCode.STORE_UNAVAILABLE
            assert len(c.store.list_rounds()) == 1
            assert c.listener.of("round_resumed") == []
            assert_sums_of(c, agents)
        finally:
            await c.close()

    run(scenario)


def test_a_client_revoked_since_the_room_read_the_revocations_is_left_out_at_once(
    tmp_path: Path, db_url: str
) -> None:
    """The room reads the revoked clients once a second, so it can select one revoked just
    now; the store refuses that cohort, and the driver reads them again and selects anew,
    with no fault and no pause."""
    config = config_for()

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            revocations = c.machine.room.revocations
            revocations.clock = lambda: 1000.0  # what it read stays fresh until expired
            revoked, *agents = c.agents(6)
            assert await revocations.current() == frozenset()
            c.store.inner.revoke_client(revoked.client_id, now=datetime.now(UTC))
            refused = asyncio.ensure_future(
                c.machine.check_in(revoked.client, task=config.task, wait=60)
            )
            await asyncio.sleep(0.05)  # it waits first, so the first selection takes it
            assert_committed(await play_round(c.machine, agents), agents, 1)
            answer = await asyncio.wait_for(refused, timeout=10)
            assert isinstance(answer, RetryAfter)
            assert answer.reason == "revoked"
            assert len(c.listener.of("selected_client_revoked")) == 1
            assert fault_calls(c) == []
            assert c.listener.of("round_not_started") == []
            assert c.sleep.delays == []
            assert_sums_of(c, agents)
        finally:
            await c.close()

    run(scenario)


# --- an accepted message the store could not keep ----------------------------------------

UNSTORED = [
    ("add_advertised_keys", RoundPhase.ADVERTISE_KEYS),
    ("add_shares", RoundPhase.SHARE_KEYS),
    ("mark_input_complete", RoundPhase.MASKED_INPUT),
    ("add_consistency_signature", RoundPhase.CONSISTENCY_CHECK),
    ("add_unmask_response", RoundPhase.UNMASKING),
]


@pytest.mark.parametrize(("method", "phase"), UNSTORED)
def test_an_accepted_message_the_store_could_not_keep_rebuilds_the_round(
    method: str, phase: RoundPhase, tmp_path: Path, db_url: str
) -> None:
    # Short masked_input deadlines, so the round ends in seconds rather than minutes (the
    # rebuilt phase gets restart_grace).
    short = (
        Deadlines(masked_input=5.0, restart_grace=2.0) if phase is RoundPhase.MASKED_INPUT else None
    )
    config = config_for(deadlines=short)

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            c.store.fail(method, after=1)  # the second agent's message of the phase
            agents = c.agents(5)
            results = await play_round(c.machine, agents)
            assert_committed(results, agents, 1)
            # the sender saw its call fail with the store's error, and sent again
            refused = [e for a in agents for e in a.errors if isinstance(e, StoreError)]
            assert [e.code for e in refused] == [ErrorCode.STORE_UNAVAILABLE]
            assert c.store.raised == [(method, refused[0])]
            await c.settle()
            error = assert_one_fault_then_recovered(c, DriverStage.CLOSE_PHASE, StoreError)
            assert error.code is ErrorCode.STORE_UNAVAILABLE
            assert "could not be stored" in str(error)  # the close decided Rebuild
            assert c.listener.phases("round_resumed") == [phase]
            assert_sums_of(c, agents)
        finally:
            await c.close()

    run(scenario)


def test_a_chunk_receipt_the_store_refused_is_sent_again_without_a_rebuild(
    tmp_path: Path, db_url: str
) -> None:
    config = config_for()

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            c.store.fail("add_input_chunk", after=4)
            agents = c.agents(5)
            assert_committed(await play_round(c.machine, agents), agents, 1)
            await c.settle()
            refused = [e for a in agents for e in a.errors if isinstance(e, StoreError)]
            assert len(refused) == 1
            assert c.store.calls["add_input_chunk"] == 5 * 3 + 1  # the refused one, again
            assert fault_calls(c) == []  # nothing was accepted in memory: no rebuild
            assert c.listener.of("round_resumed") == []
            assert_sums_of(c, agents)
        finally:
            await c.close()

    run(scenario)


def test_a_spool_write_that_fails_is_not_acknowledged_and_a_resend_is_summed(
    tmp_path: Path, db_url: str
) -> None:
    """The spool's BlobError reaches the uploader as STORAGE_UNAVAILABLE (gRPC
    UNAVAILABLE), which agents retry; the coordinator lost nothing."""
    config = config_for()

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        try:
            await c.machine.start()
            c.spool.fail_writes(1)
            agents = c.agents(5)
            assert_committed(await play_round(c.machine, agents), agents, 1)
            await c.settle()
            refused = [e for a in agents for e in a.errors if isinstance(e, BlobError)]
            assert len(refused) == 1
            assert c.spool.failed_writes == 1
            assert c.store.calls["add_input_chunk"] == 5 * 3  # one receipt per chunk
            assert fault_calls(c) == []
            assert_sums_of(c, agents)
        finally:
            await c.close()

    run(scenario)


# --- a restart in each phase -------------------------------------------------------------


@pytest.mark.parametrize("phase", list(PHASE_ORDER))
def test_a_coordinator_restarted_mid_round_resumes_it_and_commits(
    phase: RoundPhase, tmp_path: Path, db_url: str
) -> None:
    """Agents 1 and 2 answer ``phase`` (3 uploads one chunk of its masked input first);
    3, 4 and 5 wait. The coordinator stops; a second one starts on the same database,
    blobs and spool, resumes the round, and the agents finish it against the second."""
    config = config_for()
    hold = {"hold_at": phase}
    partial = {"hold_at": phase, "chunks_before_hold": 1}

    async def scenario() -> None:
        first = Coordinator.build(tmp_path, db_url, config)
        second = None
        tasks: list[asyncio.Task[Any]] = []
        try:
            await first.machine.start()
            agents = first.agents(
                5, a3=partial if phase is RoundPhase.MASKED_INPUT else hold, a4=hold, a5=hold
            )
            await check_in(first.machine, agents)
            round_id = agents[0].round_id
            tasks = [asyncio.create_task(a.run(first.machine)) for a in agents]
            await until(
                lambda: (
                    all(phase in a.acked for a in agents[:2])
                    and all(a.holding.is_set() for a in agents[2:])
                ),
                what=f"two answers and three holds in {phase.value}",
            )
            await stop_agents(tasks)
            await first.close()
            first.spool.write_chunk("stale-round", 1, offset_bytes=0, data=b"left over")

            second = Coordinator.build(tmp_path, db_url, config, seed=1)
            assert second.store.open_round().phase is phase
            await second.machine.start()
            (resumed,) = second.listener.of("round_resumed")
            assert second.listener.phases("round_resumed") == [phase]
            state = resumed[0]
            assert state is second.machine.active.state  # waiting for 3 answers: unchanged
            assert (state.round_id, state.phase) == (round_id, phase)
            assert state.aggregation.alive == frozenset({1, 2, 3, 4, 5})
            assert state.aggregation.pending == {a.secagg_id for a in agents[2:]}
            if phase is RoundPhase.MASKED_INPUT:
                assert state.complete == {a.secagg_id for a in agents[:2]}
                assert set(state.receipts[agents[2].secagg_id]) == {0}
            assert second.listener.of("round_started") == []
            # the stale spool is gone; the open round's (where it has one) is kept
            spooled = [round_id] if phase_rank(phase) >= phase_rank(RoundPhase.MASKED_INPUT) else []
            assert second.spool.rounds() == spooled

            for agent in agents[2:]:
                agent.release.set()
            tasks = [asyncio.create_task(a.run(second.machine)) for a in agents]
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=ROUND_TIMEOUT)
            assert_committed(results, agents, 1)
            await second.settle()
            assert_sums_of(second, agents)
            assert [v.version for v in second.store.list_versions()] == [0, 1]
            assert len(second.store.list_rounds()) == 1
            assert fault_calls(second) == []
        finally:
            await stop_agents(tasks)
            if second is not None:
                await second.close()

    run(scenario)


# --- watch streams of a round rebuilt from the store ------------------------------------


def _nothing_written(records: object) -> list[None]:
    raise AssertionError("these tests store no message")


def test_a_watch_open_when_the_round_is_retired_is_told_to_watch_again() -> None:
    async def scenario() -> None:
        active = ActiveRound(StateRound.open(small_config()).state, _nothing_written)
        stream = active.stream(1)
        first = await anext(stream)
        assert first.phase is RoundPhase.ADVERTISE_KEYS
        assert 1 in active.watchers
        active.retire()
        with pytest.raises(CoordinatorError) as caught:
            await asyncio.wait_for(anext(stream), timeout=5)
        assert caught.value.code is ErrorCode.STORE_UNAVAILABLE
        assert active.watchers[1] == set()  # the stream let go of its queue

    asyncio.run(scenario())


def test_a_watch_that_waited_for_the_lock_of_a_retired_round_is_told_to_watch_again() -> None:
    async def scenario() -> None:
        active = ActiveRound(StateRound.open(small_config()).state, _nothing_written)
        await active.lock.acquire()  # held, as a submit or the driver's close holds it
        stream = active.stream(1)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)  # the watch passed RoundMachine's check; it waits now
        assert not first.done()
        active.retire()  # the driver rebuilds the round ...
        active.lock.release()  # ... once the holder lets go

        async def two_events() -> None:
            await first
            await asyncio.wait_for(anext(stream), timeout=2)  # (today: nothing ever comes)

        with pytest.raises(CoordinatorError) as caught:
            await two_events()
        assert caught.value.code is ErrorCode.STORE_UNAVAILABLE

    asyncio.run(scenario())


# --- errors the driver must not survive --------------------------------------------------


def test_a_non_store_error_ends_run(tmp_path: Path, db_url: str) -> None:
    config = config_for()
    bug = RuntimeError("a bug, not an outage")

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        tasks: list[asyncio.Task[Any]] = []
        try:
            await c.driver.prepare()
            driver_task = asyncio.create_task(c.driver.run())
            c.store.fail("advance_phase", after=1, error=bug)  # closing share_keys
            agents = c.agents(5)
            await check_in(c.machine, agents)
            tasks = [asyncio.create_task(a.run(c.machine)) for a in agents]
            with pytest.raises(RuntimeError) as caught:
                await asyncio.wait_for(driver_task, timeout=ROUND_TIMEOUT)
            assert caught.value is bug
            assert c.driver.stage is DriverStage.CLOSE_PHASE
            assert fault_calls(c) == []  # not retried
            assert c.sleep.delays == []
            assert c.store.inner.open_round().phase is RoundPhase.SHARE_KEYS
        finally:
            await stop_agents(tasks)
            await c.close()

    run(scenario)


def test_a_non_store_error_in_the_commit_kills_the_driver_and_says_so(
    tmp_path: Path, db_url: str
) -> None:
    config = config_for()
    bug = RuntimeError("a bug in the commit")

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config)
        fatal: list[BaseException] = []
        c.machine.on_fatal = fatal.append
        tasks: list[asyncio.Task[Any]] = []
        try:
            await c.machine.start()
            c.store.fail("commit_round", error=bug)
            agents = c.agents(5)
            await check_in(c.machine, agents)
            tasks = [asyncio.create_task(a.run(c.machine)) for a in agents]
            await until(lambda: bool(fatal), timeout=ROUND_TIMEOUT, what="the driver to die")
            assert fatal == [bug]
            assert c.listener.of("driver_died") == [(DriverStage.COMMIT, bug)]
            assert not c.machine.serving
            assert c.health == [False]
            assert fault_calls(c) == []
            assert [v.version for v in c.store.list_versions()] == [0]
            assert c.store.inner.open_round().phase is RoundPhase.UNMASKING
            sample = c.metrics.registry.get_sample_value(
                "fedadamw_round_driver_faults_total", {"stage": "commit", "kind": "fatal"}
            )
            assert sample == 1.0
        finally:
            await stop_agents(tasks)
            await c.close()  # stop() does not raise the driver's error again

    run(scenario)


def test_stopping_a_machine_whose_driver_died_does_not_raise(tmp_path: Path, db_url: str) -> None:
    bug = RuntimeError("a bug at the start of a step")

    async def scenario() -> None:
        c = Coordinator.build(tmp_path, db_url, config_for())
        fatal: list[BaseException] = []
        c.machine.on_fatal = fatal.append
        try:
            await c.machine.start()
            c.store.fail("latest_version", error=bug)  # the driver's next step dies
            await until(lambda: bool(fatal), what="the driver to die")
            assert fatal == [bug]
            await c.machine.stop()  # what Server.stop does next; it must not raise
        finally:
            c.store.inner.close()

    run(scenario)


def test_fixtures_fail_only_what_they_are_told(tmp_path: Path, db_url: str) -> None:
    """The fault injectors themselves: counted calls, the chosen call fails, once."""
    store = FailingStore(SqlStore(db_url))
    try:
        store.fail("latest_version", times=2, after=1)
        assert store.latest_version() is None
        for _ in range(2):
            with pytest.raises(StoreError) as caught:
                store.latest_version()
            assert caught.value.code is ErrorCode.STORE_UNAVAILABLE
        assert store.latest_version() is None
        assert store.calls["latest_version"] == 4
        assert not store.pending("latest_version")
        with pytest.raises(AttributeError):
            store.fail("no_such_method")
    finally:
        store.close()
    blobs = FailingBlobStore(tmp_path / "blobs")
    blobs.fail_puts()
    with pytest.raises(BlobError):
        blobs.put(b"x")
    assert blobs.read(blobs.put(b"x")) == b"x"

"""The round driver: carries out the round state's decisions, and survives store faults.

``RoundDriver.run`` repeats until the configured number of model versions is committed
(docs/architecture.md, section 3):

1. **Open.** With no open round, it asks the waiting room for a cohort, plans the round,
   stores it with its participants, and answers the selected agents.
2. **Close.** It waits for the phase's deadline, or until nothing is pending, then lets the
   pure ``RoundState`` close the phase and carries out its decision: store the transition
   and push the next phase to every watcher (``Advance``), commit a model version
   (``Commit``), abort (``Abort``), or rebuild the round from the store (``Rebuild``).
3. **Commit.** The decoded sums go through the FedAdamW server rule; the new model, ΔG, v̄
   and t are written as blobs and committed with the round outcome in one transaction.
   Then the version is evaluated on the task's held-out set, and the retention policy
   deletes the blobs of the versions it no longer keeps (also at start-up).

**Supervision.** A store or blob error while the driver opens, closes, commits, aborts or
restores is reported (``RoundListener.driver_fault``: logged at ERROR with the round and
phase, counted) and retried with capped, jittered backoff; meanwhile health says
NOT_SERVING. Each retry first rebuilds the open round from the store (the one in memory may
be half-changed), so the round resumes with every acknowledged input or aborts cleanly. Any
other error ends ``run``; ``on_fatal`` (the server) then ends the process non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from coordinator.active_round import ActiveRound
from coordinator.blobs import BlobStore, InputSpool
from coordinator.config import CoordinatorConfig
from coordinator.domain import (
    AuditEvent,
    ModelVersion,
    Participant,
    Round,
    RoundOutcome,
    RoundPhase,
)
from coordinator.errors import BlobError, CoordinatorError, ErrorCode, StoreError
from coordinator.listener import OUTVOTED, RoundListener
from coordinator.model_state import ModelState
from coordinator.reasons import RoundAbortReason, stored_drops
from coordinator.replay import AgentRecord, replay, write_records
from coordinator.retention import apply_retention
from coordinator.round_settings import plan_round
from coordinator.round_state import Abort, Advance, Commit, Decision, Rebuild, RoundState
from coordinator.store import Store
from coordinator.waiting_room import RetryAfter, WaitingRoom
from secure_agg import SecAggError

__all__ = ["DriverStage", "RoundDriver", "fault_backoff"]

FAULT_BACKOFF_BASE = 1.0
FAULT_BACKOFF_CAP = 30.0
NOT_STARTED_PAUSE = 5.0  # seconds before another try when a round cannot be planned
ABORT_PAUSE_CAP = 60.0  # the longest pause before a round after rounds that aborted


class DriverStage(enum.StrEnum):
    """What the driver is doing: the ``stage`` label of ``fedadamw_round_driver_faults_total``."""

    OPEN_ROUND = "open_round"
    CLOSE_PHASE = "close_phase"
    COMMIT = "commit"
    ABORT = "abort"
    RESTORE = "restore"
    RETENTION = "apply_retention"


def utcnow() -> datetime:
    return datetime.now(UTC)


def fault_backoff(faults: int, rng: random.Random) -> float:
    """Seconds before retry ``faults``: uniform in [cap/2, cap], the cap doubling from 1 s
    to 30 s, so retries never come in a burst nor all at once."""
    ceiling = min(FAULT_BACKOFF_CAP, FAULT_BACKOFF_BASE * 2 ** (faults - 1))
    return rng.uniform(ceiling / 2, ceiling)


def abort_pause(aborted: int, rng: random.Random) -> float:
    """Seconds before the next round after ``aborted`` rounds in a row aborted: none after
    one (a round may abort for a passing reason), then uniform in [cap/2, cap], the cap
    doubling from 1 s to ``ABORT_PAUSE_CAP``, so that rounds that cannot succeed (every
    agent leaves at once, say) do not follow each other in a hot loop."""
    if aborted < 2:
        return 0.0
    ceiling = min(ABORT_PAUSE_CAP, 2.0 ** (aborted - 2))
    return rng.uniform(ceiling / 2, ceiling)


class RoundDriver:
    """Leads the rounds (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        blobs: BlobStore,
        spool: InputSpool,
        model: ModelState,
        config: CoordinatorConfig,
        room: WaitingRoom,
        listener: RoundListener,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.spool = spool
        self.model = model
        self.config = config
        self.room = room
        self.listener = listener
        self.clock = clock
        self.rng = rng if rng is not None else random.SystemRandom()
        self.aborted_in_a_row = 0  # rounds, since the last commit
        self.last_abort: RoundAbortReason | None = None
        self.sleep = sleep
        self.active: ActiveRound | None = None
        self.stage = DriverStage.OPEN_ROUND  # what the driver is doing, for its fault report
        self.idle = asyncio.Event()  # set when the configured rounds are all committed
        self.serving = True  # False while the driver retries a fault
        self._faults = 0  # in a row, since the driver last made progress
        self.on_health: Callable[[bool], None] | None = None
        """Called with False while the driver retries a fault, True once it recovers."""
        self._identity: dict[int, bytes] = {}
        self._evaluations: set[asyncio.Task[None]] = set()

    # --- start and stop -----------------------------------------------------------------

    async def prepare(self) -> None:
        """Store version 0 or check the stored one; clean the spool; resume an open round."""
        latest = await asyncio.to_thread(self.store.latest_version)
        if latest is None:
            initial = await asyncio.to_thread(self.model.initial_version, now=self.clock())
            await asyncio.to_thread(self.store.add_initial_version, initial)
            self.listener.initial_version_stored(initial, self.model.layout.size)
            latest = initial
        await asyncio.to_thread(self.model.check_compatible, latest)
        await self._retain()  # before a round writes blobs; a crash's orphans go too
        open_round = await asyncio.to_thread(self.store.open_round)
        for stale in await asyncio.to_thread(self.spool.rounds):
            if open_round is None or stale != open_round.round_id:
                await asyncio.to_thread(self.spool.remove_round, stale)
        if open_round is not None:
            await self._restore(open_round)
        if latest.test_loss is None:
            self._schedule_evaluation(latest)

    async def finish_evaluations(self, timeout: float) -> None:
        if self._evaluations:
            await asyncio.wait(self._evaluations, timeout=timeout)

    def identity_key(self, client_id: int) -> bytes | None:
        """The enrolled identity key of a participant of the open round, if cached."""
        return self._identity.get(client_id)

    async def _identity_key(self, client_id: int) -> bytes:
        if client_id not in self._identity:
            client = await asyncio.to_thread(self.store.get_client, client_id)
            self._identity[client_id] = client.identity_key
        return self._identity[client_id]

    def _write_records(self, records: Sequence[AgentRecord]) -> list[Exception | None]:
        """How an open round's accepted messages are stored, a batch at a time."""
        return write_records(records, self.store)

    async def _identities(self, participants: list[Participant]) -> dict[int, bytes]:
        return {p.secagg_id: await self._identity_key(p.client_id) for p in participants}

    # --- supervision --------------------------------------------------------------------

    async def run(self) -> None:
        """Drive rounds until the configured ones are committed (see the module docstring)."""
        restore = False
        while True:
            try:
                if restore:
                    await self._restore_open_round()
                    restore = False
                if await self._step():
                    return
            except (StoreError, BlobError) as exc:
                self._faults += 1
                restore = True
                delay = fault_backoff(self._faults, self.rng)
                state = self.active.state if self.active else None
                self.listener.driver_fault(self.stage, state, exc, delay, self._faults)
                self.set_serving(False)
                await self.sleep(delay)
                continue
            self._progressed()

    def _progressed(self) -> None:
        """A step, or a phase transition within one, is durable: a stall, if any, is over.
        Said at the transition, not at the step's end, so that health and the gauge do not
        lag what agents are already told."""
        if self._faults:
            self.listener.driver_recovered(self._faults)
            self._faults = 0
            self.set_serving(True)

    def set_serving(self, serving: bool) -> None:
        """Record whether the driver makes progress, and tell health (``on_health``)."""
        self.serving = serving
        if self.on_health is not None:
            self.on_health(serving)

    async def _step(self) -> bool:
        """Open a round if none is open, then run its current phase. True once training is
        finished."""
        if self.active is None:
            self.stage = DriverStage.OPEN_ROUND
            latest = await asyncio.to_thread(self.store.latest_version)
            assert latest is not None
            if latest.version >= self.config.rounds:
                self.idle.set()
                self.room.close(RetryAfter(300, "training finished"))
                self.listener.training_finished(self.config.rounds)
                return True
            if pause := abort_pause(self.aborted_in_a_row, self.rng):
                assert self.last_abort is not None
                self.listener.aborts_in_a_row(self.aborted_in_a_row, self.last_abort, pause)
                await self.sleep(pause)
            cohort = await self.room.select()
            try:
                self.active = await self._open(cohort, latest)
            except StoreError as exc:
                if exc.code is not ErrorCode.REVOKED:
                    raise
                # A client revoked since the room last read the revocations (at most a second
                # ago) was selected, and the store refused the round: read them, select again.
                self.listener.selected_client_revoked(exc)
                self.room.revocations.expire()
                return False
            except BlobError:
                raise
            except CoordinatorError as exc:
                self.listener.round_not_started(exc)
                await self.sleep(NOT_STARTED_PAUSE)
                return False
        await self._run_phase(self.active)
        return False

    async def _restore_open_round(self) -> None:
        """Replace the in-memory round by the one the store holds (after a driver fault).

        The old round is retired first: every call on it gets UNAVAILABLE (agents retry),
        and its watchers are told to watch again. Holding its lock and waiting for its queued
        writes lets every message being stored finish first, so the replay sees everything
        that was acknowledged. Until the
        replay succeeds the retired round stays in place, refusing work.
        """
        self.stage = DriverStage.RESTORE
        old = self.active
        if old is None:
            await self._replace_active()
            return
        old.retire()
        async with old.lock:
            await old.writes.drained()  # what was acknowledged is in the store
            await self._replace_active()

    async def _replace_active(self) -> None:
        open_round = await asyncio.to_thread(self.store.open_round)
        if open_round is None:
            self.active = None
        else:
            await self._restore(open_round)

    async def _restore(self, round_: Round) -> None:
        participants = await asyncio.to_thread(self.store.list_participants, round_.round_id)
        identity = await self._identities(participants)
        deadline = max(
            round_.deadline,
            self.clock() + timedelta(seconds=self.config.deadlines.restart_grace),
        )
        try:
            state = await asyncio.to_thread(
                replay,
                round_,
                store=self.store,
                spool=self.spool,
                identity=identity,
                deadline=deadline,
                now=self.clock(),
            )
        except (StoreError, BlobError):
            raise  # the store or the disk, not the round: the driver retries
        except (CoordinatorError, SecAggError) as exc:
            self.listener.resume_failed(round_, exc)
            stored = await asyncio.to_thread(
                self.store.abort_round,
                round_.round_id,
                reason=RoundAbortReason.RESUME_FAILED,
                now=self.clock(),
            )
            await asyncio.to_thread(self.spool.remove_round, round_.round_id)
            self.listener.aborted(stored, round_.phase, RoundAbortReason.RESUME_FAILED)
            self.listener.round_ended(
                RoundOutcome.ABORTED, 0, (self.clock() - round_.started_at).total_seconds()
            )
            self.active = None
            return
        self.active = ActiveRound(state, self._write_records)
        self.listener.round_resumed(state)
        await self._audit("round_resumed", f"{round_.round_id} in {round_.phase}")

    # --- one round ----------------------------------------------------------------------

    async def _open(self, cohort: list[int], version: ModelVersion) -> ActiveRound:
        now = self.clock()
        round_id = uuid.uuid4().hex
        number = await asyncio.to_thread(self.store.next_round_number)
        settings = plan_round(
            self.config,
            round_id=round_id,
            number=number,
            version=version,
            cohort_size=len(cohort),
            model_length=self.model.layout.size,
            num_blocks=self.model.num_blocks,
            block_mode=self.model.block_mode,
            blob_sizes={
                "model": self.blobs.size(version.model_sha256),
                "second_moment": self.blobs.size(version.second_moment_sha256),
            },
        )
        participants = [
            Participant(round_id=round_id, client_id=client_id, secagg_id=i + 1)
            for i, client_id in enumerate(cohort)
        ]
        identity = await self._identities(participants)
        round_ = Round(
            round_id=round_id,
            number=number,
            model_version=version.version,
            phase=RoundPhase.ADVERTISE_KEYS,
            outcome=RoundOutcome.RUNNING,
            config=settings.to_json(),
            started_at=now,
            deadline=now + settings.phase_duration(RoundPhase.ADVERTISE_KEYS),
        )
        await asyncio.to_thread(self.store.create_round, round_, participants)
        state = RoundState.opened(round_, settings, participants, identity, now=now)
        self.room.assign(round_id, participants)
        self.listener.round_started(state, len(participants))
        return ActiveRound(state, self._write_records)

    async def _run_phase(self, active: ActiveRound) -> None:
        timeout = (active.state.deadline - self.clock()).total_seconds()
        if timeout > 0:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set, and stop() would wait for the driver
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await active.ready.wait()
        async with active.lock:
            # the accepted messages in the state are in the store, or the state says not
            await active.writes.drained()
            self.stage = DriverStage.CLOSE_PHASE
            state = active.state
            unmasks = state.phase is RoundPhase.UNMASKING and state.ready_to_sum
            started = time.perf_counter()
            decision: Decision = await asyncio.to_thread(state.close, self.clock())
            if unmasks:
                self.listener.unmasked(time.perf_counter() - started)
            if isinstance(decision, Rebuild):
                # Memory holds a message the store lacks: rebuild from the store.
                raise StoreError(
                    decision.cause, f"an accepted message could not be stored ({decision.cause})"
                )
            self.listener.dropped(decision.phase, decision.dropped)
            if isinstance(decision, Abort):
                self.stage = DriverStage.ABORT
                await self._abort(active, decision)
            elif isinstance(decision, Commit):
                self.stage = DriverStage.COMMIT
                await self._commit(active, decision)
            else:
                await self._advance(active, decision)

    async def _advance(self, active: ActiveRound, decision: Advance) -> None:
        now = self.clock()
        state = active.state
        round_ = await asyncio.to_thread(
            self.store.advance_phase,
            active.round_id,
            expected=decision.phase,
            new=decision.new_phase,
            now=now,
            deadline=decision.deadline,
            dropped=stored_drops(decision.dropped),
        )
        seconds = (now - state.phase_started).total_seconds()
        events = state.advanced(round_, decision, now)
        active.update_ready()
        self._progressed()
        self.listener.phase_closed(state, decision, seconds)
        active.broadcast(events)

    async def _commit(self, active: ActiveRound, decision: Commit) -> None:
        settings = active.state.settings
        sums = decision.sums
        version = await asyncio.to_thread(self.store.get_version, settings.model_version)
        now = self.clock()
        new_version = await asyncio.to_thread(
            self.model.next_version,
            version,
            sums,
            local_steps=settings.local_steps,
            lr=settings.lr,
            server_lr=settings.server_lr,
            round_id=active.round_id,
            now=now,
        )
        round_ = await asyncio.to_thread(
            self.store.commit_round,
            active.round_id,
            version=new_version,
            now=now,
            dropped=stored_drops(decision.dropped),
        )
        self._progressed()
        if decision.culprits:  # after the commit: a replay after a crash audits once
            self.listener.culprits(active.state, decision.culprits, OUTVOTED)
            await self._audit(
                "forged_shares",
                f"round {active.round_id}: clients {', '.join(map(str, decision.culprits))} "
                "(outvoted; the round went on)",
            )
        self._schedule_evaluation(new_version)
        self.listener.committed(round_, new_version, sums)
        self.aborted_in_a_row = 0
        await self._finish(active, round_, new_version.version, None, sums.survivors)
        await self._retain()

    async def _abort(self, active: ActiveRound, decision: Abort) -> None:
        if decision.culprits:
            self.listener.culprits(active.state, decision.culprits, decision.reason)
            await self._audit(
                "forged_shares",
                f"round {active.round_id}: clients {', '.join(map(str, decision.culprits))}",
            )
        round_ = await asyncio.to_thread(
            self.store.abort_round,
            active.round_id,
            reason=decision.reason,
            now=self.clock(),
            dropped=stored_drops(decision.dropped),
        )
        self._progressed()
        self.listener.aborted(round_, decision.phase, decision.reason)
        self.aborted_in_a_row += 1
        self.last_abort = decision.reason
        await self._finish(active, round_, active.state.settings.model_version, decision.reason, 0)

    async def _finish(
        self,
        active: ActiveRound,
        round_: Round,
        version: int,
        reason: RoundAbortReason | None,
        survivors: int,
    ) -> None:
        outcome = RoundOutcome.COMMITTED if reason is None else RoundOutcome.ABORTED
        self.listener.round_ended(
            outcome, survivors, (self.clock() - round_.started_at).total_seconds()
        )
        event = active.state.ended(round_, model_version=version, reason=reason)
        active.finished = event
        active.broadcast(dict.fromkeys(active.state.secagg_ids.values(), event))
        self.active = None
        await asyncio.to_thread(self.spool.remove_round, active.round_id)
        await self._audit(f"round_{outcome.value}", f"{active.round_id} {reason or ''}".strip())

    async def _retain(self) -> None:
        """A pass of the retention policy (``coordinator.retention``). Never while a
        version's blobs are written and not yet committed: the pass would delete them."""
        self.stage = DriverStage.RETENTION
        report = await asyncio.to_thread(
            apply_retention,
            self.store,
            self.blobs,
            keep_versions=self.config.retention.keep_versions,
            keep_rounds=self.config.retention.keep_rounds,
            now=self.clock(),
        )
        self.listener.retention_applied(report)

    def _schedule_evaluation(self, version: ModelVersion) -> None:
        task = asyncio.get_running_loop().create_task(self._evaluate(version))
        self._evaluations.add(task)
        task.add_done_callback(self._evaluations.discard)

    async def _evaluate(self, version: ModelVersion) -> None:
        try:
            evaluation = await asyncio.to_thread(self.model.evaluate, version)
            if evaluation is None:
                return
            await asyncio.to_thread(
                self.store.record_evaluation,
                version.version,
                loss=evaluation.loss,
                accuracy=evaluation.accuracy,
            )
        except (CoordinatorError, OSError) as exc:
            self.listener.evaluation_failed(version, exc)
            return
        self.listener.evaluated(version, evaluation)

    async def _audit(self, action: str, detail: str) -> None:
        """An audit event; one that cannot be written is logged, and the round goes on."""
        try:
            await asyncio.to_thread(
                self.store.audit,
                AuditEvent(at=self.clock(), actor="coordinator", action=action, detail=detail),
            )
        except StoreError as exc:
            self.listener.audit_failed(action, exc)

"""The round machine: selection, the phases with their deadlines, commit or abort.

One ``RoundMachine`` leads rounds (docs/architecture.md, section 3). Its driver task repeats until
the configured number of model versions is committed:

1. **Selection.** Agents long-poll ``check_in``; once ``cohort`` of them wait (or
   ``min_clients`` after the selection deadline), it selects up to ``cohort × (1 +
   over_selection)`` of those waiting at random (agents that were not selected keep
   waiting through a round, so a large fleet fills the margin), stores the round and its
   cohort, and answers their check-ins with an assignment.
2. **Phases.** Each phase closes at its deadline, or as soon as no alive participant is
   pending. Closing persists the transition (who dropped, and why), then pushes the next
   phase's opening message to every watching agent at once (``watch``), so a round's wall
   time is work plus network.
3. **Commit.** The decoded sums go through the FedAdamW server rule; the new model, ΔG, v̄
   and t are written as blobs and committed with the round outcome in one transaction.
   Then the version is evaluated on the task's held-out set.

A round aborts when the aggregation says so (fewer than t clients, bad shares) or when
fewer than ``min_clients`` remain; no model version is written, and the next round starts.

**Durability.** Every agent message is checked against the in-memory aggregation, then
stored, then acknowledged. Masked inputs are kept: each chunk is written to the input spool
and fsynced, its receipt stored, and only then acknowledged; a participant's input enters
the sum once all its chunks are durable (read back from the spool). We keep each input
until the round ends, rather than a durable running sum with group commit, because it makes
recovery a plain replay (``active_round.replay``) with no partial-sum bookkeeping, and it
keeps the in-memory sum O(d) whatever the cohort; it costs disk space of n·d ring elements
per round, freed when the round ends. After ``kill -9`` and a restart, the open round is
replayed and resumes with every acknowledged input, its phase deadline extended by
``restart_grace`` so agents can reconnect; model versions only move forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from coordinator.active_round import (
    ActiveRound,
    RoundEvent,
    input_messages,
    new_aggregation,
    replay,
)
from coordinator.aggregation import PhaseClosed
from coordinator.blobs import BlobStore, InputSpool
from coordinator.config import CoordinatorConfig
from coordinator.domain import (
    AddResult,
    AuditEvent,
    Client,
    InputChunkRecord,
    ModelVersion,
    Participant,
    Round,
    RoundOutcome,
    RoundPhase,
)
from coordinator.errors import BlobError, CoordinatorError, ErrorCode, StoreError
from coordinator.metrics import Metrics
from coordinator.model_state import ModelState, RoundSums
from coordinator.round_settings import RoundSettings, plan_round
from coordinator.store import Store
from coordinator.transitions import NEXT_PHASE
from secure_agg import (
    AbortReason,
    ClientAbort,
    ClientMessage,
    DropReason,
    SecAggError,
    decode_sum,
)

__all__ = ["Assignment", "RetryAfter", "RoundMachine", "UploadProgress"]

log = logging.getLogger(__name__)

FAULT_BACKOFF_BASE = 1.0
FAULT_BACKOFF_CAP = 30.0
STORE_FAILURE = "store_failure"  # an ActiveRound.failure prefix: restore, do not abort

CONNECTED_WINDOW = 60.0  # seconds since a client's last call for it to count as connected


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Assignment:
    round_id: str
    secagg_id: int
    phase: RoundPhase = RoundPhase.ADVERTISE_KEYS  # the round's phase when assigned


@dataclass(frozen=True)
class RetryAfter:
    seconds: int
    reason: str


@dataclass(frozen=True)
class UploadProgress:
    round_id: str
    total_chunks: int
    received: tuple[int, ...]
    complete: bool
    phase: RoundPhase  # the round's phase when reported


# Phases in the order a round goes through them; both ends rank last.
_PHASE_RANK = {phase: min(i, 5) for i, phase in enumerate(RoundPhase)}


def _check_reached(active: ActiveRound, seen: RoundPhase | None) -> None:
    """A read names the latest phase its agent has seen; the round must have reached it."""
    if seen is not None and _PHASE_RANK[seen] > _PHASE_RANK[active.phase]:
        raise CoordinatorError(
            ErrorCode.WRONG_PHASE,
            f"round {active.round_id} is in phase {active.phase.value}; "
            f"it has not reached {seen.value}",
        )


def _check_not_retired(active: ActiveRound) -> None:
    if active.retired:
        raise CoordinatorError(
            ErrorCode.STORE_UNAVAILABLE,
            f"round {active.round_id} is being rebuilt from the store; retry",
        )


def _check_same(held: ActiveRound, current: ActiveRound) -> None:
    """The round whose lock a call waited for must still be the open one."""
    if current is not held:
        raise CoordinatorError(
            ErrorCode.STORE_UNAVAILABLE,
            f"round {held.round_id} was rebuilt from the store while this call waited; retry",
        )


def _protocol_error(exc: SecAggError) -> CoordinatorError:
    return CoordinatorError(ErrorCode.PROTOCOL_VIOLATION, f"{exc}")


class RoundMachine:
    """Leads the rounds; the gRPC service calls its agent-facing methods."""

    def __init__(
        self,
        *,
        store: Store,
        blobs: BlobStore,
        spool: InputSpool,
        model: ModelState,
        config: CoordinatorConfig,
        metrics: Metrics,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.spool = spool
        self.model = model
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.rng = rng if rng is not None else random.SystemRandom()
        self.active: ActiveRound | None = None
        self._waiting: dict[int, asyncio.Future[Assignment | RetryAfter]] = {}
        self._waiters_changed = asyncio.Event()
        self._seen: dict[int, float] = {}
        self._identity: dict[int, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._finished_training = False
        self._evaluations: set[asyncio.Task[None]] = set()
        self._stage = "open_round"  # what the driver is doing, for its fault log and metric
        self.idle = asyncio.Event()  # set when the configured rounds are all committed
        self.serving = True  # False while the driver retries a fault
        self.on_health: Callable[[bool], None] | None = None
        """Called with False while the driver retries a fault, True once it recovers."""
        self.on_fatal: Callable[[BaseException], None] | None = None
        """Called once if the driver dies of an error it cannot handle (the server exits)."""

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare version 0 or check the stored one, resume an open round, start driving."""
        latest = await asyncio.to_thread(self.store.latest_version)
        if latest is None:
            initial = await asyncio.to_thread(self.model.initial_version, now=self.clock())
            await asyncio.to_thread(self.store.add_initial_version, initial)
            latest = initial
            log.info("stored the initial model (version 0, %d parameters)", self.model.layout.size)
        await asyncio.to_thread(self.model.check_compatible, latest)
        self.metrics.model_version.set(latest.version)
        self.metrics.configured_rounds.set(self.config.rounds)
        open_round = await asyncio.to_thread(self.store.open_round)
        for stale in await asyncio.to_thread(self.spool.rounds):
            if open_round is None or stale != open_round.round_id:
                await asyncio.to_thread(self.spool.remove_round, stale)
        if open_round is not None:
            await self._restore(open_round)
        if latest.test_loss is None:
            self._schedule_evaluation(latest)
        self._task = asyncio.create_task(self._drive(), name="round-machine")
        self._task.add_done_callback(self._driver_ended)
        self._housekeeping = asyncio.create_task(self._gauges(), name="round-gauges")

    async def stop(self) -> None:
        """Stop driving rounds; let evaluations of committed versions finish (up to 60 s)."""
        if self._evaluations:
            await asyncio.wait(self._evaluations, timeout=60)
        for task in (self._task, self._housekeeping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for future in self._waiting.values():
            if not future.done():
                future.cancel()

    async def _restore(self, round_: Round) -> None:
        participants = await asyncio.to_thread(self.store.list_participants, round_.round_id)
        identity = {p.secagg_id: await self._identity_key(p.client_id) for p in participants}
        deadline = max(
            round_.deadline,
            self.clock() + timedelta(seconds=self.config.deadlines.restart_grace),
        )
        try:
            self.active = await asyncio.to_thread(
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
            log.error("cannot resume round %s: %s; aborting it", round_.round_id, exc)
            await asyncio.to_thread(
                self.store.abort_round, round_.round_id, reason="resume_failed", now=self.clock()
            )
            await asyncio.to_thread(self.spool.remove_round, round_.round_id)
            self.metrics.rounds.labels(RoundOutcome.ABORTED.value).inc()
            self.active = None
            return
        self.metrics.set_phase(round_.phase)
        self.metrics.cohort.set(len(participants))
        log.info(
            "resumed round %d (%s) in phase %s with %d participants",
            round_.number,
            round_.round_id,
            round_.phase.value,
            len(participants),
        )
        await self._audit("coordinator", "round_resumed", f"{round_.round_id} in {round_.phase}")

    # --- the driver ---------------------------------------------------------------------

    async def _drive(self) -> None:
        """Run rounds until the configured ones are committed, surviving store and blob faults.

        A store or blob error while the driver opens a round, closes a phase, commits, aborts
        or restores is logged at ERROR with the round and phase, counted, and retried with
        capped, jittered backoff; meanwhile ``fedadamw_round_driver_stalled`` is 1 and the
        health service says NOT_SERVING. Each retry first rebuilds the open round from the
        store (the in-memory round may be half-changed), so the round resumes with every
        acknowledged input, or aborts cleanly. Any other error ends the task; ``on_fatal``
        (the server) then ends the process non-zero so a supervisor restarts it.
        """
        faults = 0
        restore = False
        while True:
            try:
                if restore:
                    await self._restore_open_round()
                    restore = False
                if await self._drive_once():
                    return
            except (StoreError, BlobError) as exc:
                faults += 1
                restore = True
                delay = self._fault_backoff(faults)
                active = self.active
                log.error(
                    "round driver: %s while it was to %s (round %s, phase %s): %s; "
                    "retrying in %.1fs (fault %d)",
                    type(exc).__name__,
                    self._stage.replace("_", " "),
                    active.round_id if active else "none",
                    active.phase.value if active else "none",
                    exc,
                    delay,
                    faults,
                )
                self.metrics.driver_faults.labels(self._stage, exc.code.value).inc()
                self._set_serving(False)
                await asyncio.sleep(delay)
                continue
            if faults:
                log.info("round driver: recovered after %d faults", faults)
                faults = 0
                self._set_serving(True)

    def _driver_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        log.error(
            "round driver died while it was to %s: %r; the coordinator must restart",
            self._stage.replace("_", " "),
            exc,
            exc_info=exc,
        )
        self.metrics.driver_faults.labels(self._stage, "fatal").inc()
        self._set_serving(False)
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def _fault_backoff(self, faults: int) -> float:
        """Seconds before retry ``faults``: uniform in [cap/2, cap], the cap doubling from 1 s
        to 30 s, so retries never come in a burst nor all at once."""
        ceiling = min(FAULT_BACKOFF_CAP, FAULT_BACKOFF_BASE * 2 ** (faults - 1))
        return self.rng.uniform(ceiling / 2, ceiling)

    def _set_serving(self, serving: bool) -> None:
        self.serving = serving
        self.metrics.driver_stalled.set(0 if serving else 1)
        if self.on_health is not None:
            self.on_health(serving)

    async def _drive_once(self) -> bool:
        """Open a round if none is open, then run its current phase. True once training is
        finished."""
        if self.active is None:
            self._stage = "open_round"
            latest = await asyncio.to_thread(self.store.latest_version)
            assert latest is not None
            if latest.version >= self.config.rounds:
                self._finished_training = True
                self.idle.set()
                self._release_waiters(RetryAfter(300, "training finished"))
                log.info("all %d rounds committed; idle", self.config.rounds)
                return True
            cohort = await self._select()
            try:
                self.active = await self._open_round(cohort, latest)
            except (StoreError, BlobError):
                raise
            except CoordinatorError as exc:
                log.error("cannot start a round: %s", exc)
                await asyncio.sleep(5)
                return False
        await self._run_phase(self.active)
        return False

    async def _restore_open_round(self) -> None:
        """Replace the in-memory round by the one the store holds (after a driver fault).

        The old round is retired first: every call on it gets UNAVAILABLE (agents retry),
        and its watchers are told to watch again. Holding its lock lets a message being
        stored finish first, so the replay sees everything that was acknowledged. Until the
        replay succeeds the retired round stays in place, refusing work.
        """
        self._stage = "restore"
        old = self.active
        if old is None:
            await self._replace_active()
            return
        old.retire()
        async with old.lock:
            await self._replace_active()

    async def _replace_active(self) -> None:
        open_round = await asyncio.to_thread(self.store.open_round)
        if open_round is None:
            self.active = None
        else:
            await self._restore(open_round)

    async def _select(self) -> list[int]:
        first = None
        while True:
            waiting = [c for c, f in self._waiting.items() if not f.done()]
            if len(waiting) >= self.config.min_clients:
                waiting = await self._not_revoked(waiting)
            now = time.monotonic()
            if waiting and first is None:
                first = now
            if len(waiting) >= self.config.cohort:
                break
            if (
                first is not None
                and len(waiting) >= self.config.min_clients
                and now - first >= self.config.deadlines.selection
            ):
                break
            self._waiters_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._waiters_changed.wait(), timeout=1.0)
        return self.rng.sample(waiting, min(len(waiting), self.config.selected))

    async def _not_revoked(self, waiting: list[int]) -> list[int]:
        """Drop revoked clients from the waiting ones (revoked while they waited)."""
        clients = await asyncio.to_thread(self.store.list_clients)
        revoked = {c.client_id for c in clients if c.revoked}
        for client_id in revoked.intersection(waiting):
            future = self._waiting.get(client_id)
            if future is not None and not future.done():
                future.set_result(RetryAfter(60, "revoked"))
        return [c for c in waiting if c not in revoked]

    async def _open_round(self, cohort: list[int], version: ModelVersion) -> ActiveRound:
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
        identity = {}
        for p in participants:
            identity[p.secagg_id] = await self._identity_key(p.client_id)
        deadline = now + settings.phase_duration(RoundPhase.ADVERTISE_KEYS)
        round_ = Round(
            round_id=round_id,
            number=number,
            model_version=version.version,
            phase=RoundPhase.ADVERTISE_KEYS,
            outcome=RoundOutcome.RUNNING,
            config=settings.to_json(),
            started_at=now,
            deadline=deadline,
        )
        await asyncio.to_thread(self.store.create_round, round_, participants)
        active = ActiveRound(
            round=round_,
            settings=settings,
            participants={p.client_id: p for p in participants},
            aggregation=new_aggregation(settings, identity),
            deadline=deadline,
            phase_started=now,
        )
        active.update_ready()
        for p in participants:
            future = self._waiting.get(p.client_id)
            if future is not None and not future.done():
                future.set_result(Assignment(round_id, p.secagg_id))
        self.metrics.cohort.set(len(participants))
        self.metrics.selected.inc(len(participants))
        self.metrics.set_phase(RoundPhase.ADVERTISE_KEYS)
        log.info(
            "round %d (%s) started: %d clients, model version %d, lr %.3g, %s",
            number,
            round_id,
            len(participants),
            version.version,
            settings.lr,
            (
                f"secure aggregation (t={settings.threshold}, "
                f"k={settings.degree if settings.degree is not None else 'complete'}, "
                f"ring 2^{settings.layout.ring_bits})"
            )
            if settings.secure
            else "PLAIN sums (no secure aggregation)",
        )
        return active

    async def _run_phase(self, active: ActiveRound) -> None:
        timeout = (active.deadline - self.clock()).total_seconds()
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(active.ready.wait(), timeout=timeout)
        async with active.lock:
            if active.failure is not None:
                if active.failure.startswith(STORE_FAILURE):
                    # Memory holds a message the store lacks: rebuild from the store.
                    raise StoreError(
                        ErrorCode.STORE_UNAVAILABLE,
                        f"an accepted message could not be stored ({active.failure})",
                    )
                self._stage = "abort"
                await self._abort(active, active.failure, {})
                return
            self._stage = "close_phase"
            phase = active.phase
            started = time.perf_counter()
            closed: PhaseClosed = await asyncio.to_thread(active.aggregation.close)
            if phase is RoundPhase.UNMASKING:
                self.metrics.unmask_seconds.observe(time.perf_counter() - started)
            self._count_dropouts(phase, closed.dropped)
            if closed.aborted is not None:
                if closed.culprits:
                    await self._name_culprits(active, closed)
                await self._abort(active, closed.aborted, closed.dropped)
            elif closed.ring_sum is not None:
                self._stage = "commit"
                await self._commit(active, closed)
            else:
                assert closed.next is not None
                if len(closed.next.alive) < active.settings.min_clients:
                    await self._abort(active, "too_few_clients", closed.dropped)
                else:
                    await self._advance(active, closed)

    async def _advance(self, active: ActiveRound, closed: PhaseClosed) -> None:
        assert closed.next is not None
        now = self.clock()
        new_phase = NEXT_PHASE[active.phase]
        deadline = now + active.settings.phase_duration(new_phase)
        round_ = await asyncio.to_thread(
            self.store.advance_phase,
            active.round_id,
            expected=active.phase,
            new=new_phase,
            now=now,
            deadline=deadline,
            dropped=dict(closed.dropped),
        )
        log.info(
            "round %d: %s closed (%d alive, %d dropped) -> %s",
            round_.number,
            active.phase.value,
            len(closed.next.alive),
            len(closed.dropped),
            new_phase.value,
        )
        self.metrics.phase_seconds.labels(active.phase.value).observe(
            (now - active.phase_started).total_seconds()
        )
        active.round = round_
        active.aggregation = closed.next
        active.deadline = deadline
        active.phase_started = now
        active.update_ready()
        self.metrics.set_phase(new_phase)
        active.broadcast(
            {
                secagg: RoundEvent(
                    round_id=active.round_id,
                    phase=new_phase,
                    message=closed.messages.get(secagg),
                )
                for secagg in active.secagg_ids.values()
            }
        )

    async def _commit(self, active: ActiveRound, closed: PhaseClosed) -> None:
        assert closed.ring_sum is not None
        settings = active.settings
        survivors = len(closed.survivors)
        sums = decode_sum(settings.layout, closed.ring_sum, num_clients=survivors)
        round_sums = RoundSums(
            delta=sums["delta"],
            second_moment=sums.get("second_moment"),
            weight=float(sums["weight"][0]),
            clipped=float(sums["clip_count"][0]),
            survivors=survivors,
            samples=float(sums["samples"][0]) if "samples" in sums else 0.0,
            train_loss=float(sums["train_loss"][0]) if "train_loss" in sums else 0.0,
        )
        version = await asyncio.to_thread(self.store.get_version, settings.model_version)
        now = self.clock()
        new_version = await asyncio.to_thread(
            self.model.next_version,
            version,
            round_sums,
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
            dropped=dict(closed.dropped),
        )
        self._schedule_evaluation(new_version)
        self.metrics.clipped_values.inc(round_sums.clipped)
        self.metrics.samples.inc(round_sums.samples)
        self.metrics.train_loss.set(round_sums.train_loss / survivors)
        self.metrics.model_version.set(new_version.version)
        log.info(
            "round %d committed model version %d from %d clients: mean train loss %.4f, "
            "%d samples, %d delta values clipped",
            round_.number,
            new_version.version,
            survivors,
            round_sums.train_loss / survivors,
            round(round_sums.samples),
            int(round_sums.clipped),
        )
        await self._finish(active, round_, new_version.version, None, survivors)

    async def _name_culprits(self, active: ActiveRound, closed: PhaseClosed) -> None:
        """Log and audit the clients whose revealed shares were proven forged."""
        by_secagg = {p.secagg_id: p.client_id for p in active.participants.values()}
        clients = sorted(by_secagg[secagg] for secagg in closed.culprits if secagg in by_secagg)
        log.error(
            "round %s: clients %s revealed forged shares (%s); the round aborts without a sum",
            active.round_id,
            clients,
            closed.aborted,
        )
        await self._audit(
            "coordinator",
            "forged_shares",
            f"round {active.round_id}: clients {', '.join(map(str, clients))}",
        )

    async def _abort(self, active: ActiveRound, reason: str, dropped: Mapping[int, str]) -> None:
        now = self.clock()
        round_ = await asyncio.to_thread(
            self.store.abort_round, active.round_id, reason=reason, now=now, dropped=dict(dropped)
        )
        log.warning("round %d aborted in %s: %s", round_.number, active.phase.value, reason)
        self.metrics.aborts.labels(active.phase.value, reason.partition(":")[0]).inc()
        await self._finish(active, round_, active.settings.model_version, reason, 0)

    async def _finish(
        self, active: ActiveRound, round_: Round, version: int, reason: str | None, survivors: int
    ) -> None:
        outcome = RoundOutcome.COMMITTED if reason is None else RoundOutcome.ABORTED
        self.metrics.rounds.labels(outcome.value).inc()
        self.metrics.survivors.set(survivors)
        self.metrics.set_phase(None)
        self.metrics.round_seconds.observe((self.clock() - round_.started_at).total_seconds())
        active.round = round_
        event = RoundEvent(
            round_id=active.round_id,
            phase=round_.phase,
            outcome=outcome,
            model_version=version,
            reason=reason,
        )
        active.finished = event
        active.broadcast(dict.fromkeys(active.secagg_ids.values(), event))
        self.active = None
        await asyncio.to_thread(self.spool.remove_round, active.round_id)
        await self._audit(
            "coordinator", f"round_{outcome.value}", f"{active.round_id} {reason or ''}".strip()
        )

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
            log.error("evaluating model version %d failed: %s", version.version, exc)
            return
        self.metrics.test_loss.set(evaluation.loss)
        if evaluation.accuracy is not None:
            self.metrics.test_accuracy.set(evaluation.accuracy)
        log.info(
            "model version %d: test loss %.4f, accuracy %s",
            version.version,
            evaluation.loss,
            "n/a" if evaluation.accuracy is None else f"{evaluation.accuracy:.4f}",
        )

    def _count_dropouts(self, phase: RoundPhase, dropped: Mapping[int, str]) -> None:
        for reason in dropped.values():
            self.metrics.dropouts.labels(phase.value, reason.partition(":")[0]).inc()

    async def _gauges(self) -> None:
        while True:
            now = time.monotonic()
            self.metrics.connected.set(
                sum(1 for t in self._seen.values() if now - t < CONNECTED_WINDOW)
            )
            with contextlib.suppress(StoreError):
                clients = await asyncio.to_thread(self.store.list_clients)
                self.metrics.enrolled.set(sum(1 for c in clients if not c.revoked))
            await asyncio.sleep(5)

    async def _audit(self, actor: str, action: str, detail: str) -> None:
        try:
            await asyncio.to_thread(
                self.store.audit,
                AuditEvent(at=self.clock(), actor=actor, action=action, detail=detail),
            )
        except StoreError as exc:
            log.error("cannot write the audit log: %s", exc)

    def _release_waiters(self, answer: RetryAfter) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_result(answer)

    def identity_key(self, client_id: int) -> bytes:
        """The enrolled identity key of a participant of the open round."""
        try:
            return self._identity[client_id]
        except KeyError as exc:
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT, f"client {client_id} is not in the open round"
            ) from exc

    async def _identity_key(self, client_id: int) -> bytes:
        if client_id not in self._identity:
            client = await asyncio.to_thread(self.store.get_client, client_id)
            self._identity[client_id] = client.identity_key
        return self._identity[client_id]

    # --- agent-facing -------------------------------------------------------------------

    def seen(self, client_id: int) -> None:
        self._seen[client_id] = time.monotonic()

    async def check_in(self, client: Client, *, task: str, wait: float) -> Assignment | RetryAfter:
        """An assignment once a round selects ``client``, or when to come back."""
        if task and task != self.config.task:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"this coordinator trains task {self.config.task!r}, not {task!r}",
            )
        active = self.active
        if active is not None and client.client_id in active.participants:
            p = active.participants[client.client_id]
            if p.secagg_id in active.aggregation.alive:
                return Assignment(active.round_id, p.secagg_id, active.phase)
        if self._finished_training:
            return RetryAfter(300, "training finished")
        previous = self._waiting.get(client.client_id)
        if previous is not None and not previous.done():
            previous.set_result(RetryAfter(1, "checked in again elsewhere"))
        future: asyncio.Future[Assignment | RetryAfter] = asyncio.get_running_loop().create_future()
        self._waiting[client.client_id] = future
        self._waiters_changed.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, wait))
        except TimeoutError:
            if future.done():
                return future.result()
            return RetryAfter(1, "no round for this client yet")
        finally:
            if self._waiting.get(client.client_id) is future:
                del self._waiting[client.client_id]

    def _require(
        self, client_id: int, round_id: str, phase: RoundPhase | None
    ) -> tuple[ActiveRound, Participant]:
        active = self.active
        if active is None or active.round_id != round_id:
            raise CoordinatorError(
                ErrorCode.STALE_ROUND,
                f"round {round_id} is not the open round "
                f"({active.round_id if active else 'none is open'})",
            )
        _check_not_retired(active)
        participant = active.participants.get(client_id)
        if participant is None:
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT, f"client {client_id} is not in round {round_id}"
            )
        if phase is not None and phase is not active.phase:
            raise CoordinatorError(
                ErrorCode.WRONG_PHASE,
                f"round {round_id} is in phase {active.phase.value}, not {phase.value}",
            )
        if participant.secagg_id not in active.aggregation.alive:
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT,
                f"client {client_id} was dropped from round {round_id}",
            )
        return active, participant

    def round_settings(
        self, client_id: int, round_id: str, seen: RoundPhase | None = None
    ) -> tuple[RoundSettings, Participant, datetime, RoundPhase]:
        """The open round's settings for a participant, when it started, and its phase."""
        active, participant = self._require(client_id, round_id, None)
        _check_reached(active, seen)
        return active.settings, participant, active.round.started_at, active.phase

    def round_blobs(self, client_id: int, round_id: str, seen: RoundPhase | None) -> set[str]:
        """The blobs (sha256) a participant of the open round may download."""
        active, _ = self._require(client_id, round_id, None)
        _check_reached(active, seen)
        settings = active.settings
        return {
            settings.model_sha256,
            settings.global_update_sha256,
            settings.second_moment_sha256,
        }

    async def watch(
        self, client_id: int, round_id: str, seen: RoundPhase | None = None
    ) -> AsyncIterator[RoundEvent]:
        """The round's events for ``client_id``: the current phase first, then each change."""
        active = self.active
        if active is None or active.round_id != round_id:
            round_ = await asyncio.to_thread(self.store.get_round, round_id)
            # only its own cohort may learn how a round ended
            await asyncio.to_thread(self.store.get_participant, round_id, client_id)
            if round_.is_open:
                raise CoordinatorError(
                    ErrorCode.STALE_ROUND, f"round {round_id} is not being led here"
                )
            committed = round_.outcome is RoundOutcome.COMMITTED
            yield RoundEvent(
                round_id=round_id,
                phase=round_.phase,
                outcome=round_.outcome,
                model_version=round_.model_version + 1 if committed else round_.model_version,
                reason=round_.abort_reason,
            )
            return
        _check_not_retired(active)
        member = active.participants.get(client_id)
        if member is None:
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT, f"client {client_id} is not in round {round_id}"
            )
        participant = member
        _check_reached(active, seen)
        queue: asyncio.Queue[RoundEvent] = asyncio.Queue()
        # Under the lock that phase changes take, so no change is both the first event
        # and queued.
        async with active.lock:
            ended = active.finished  # it may have ended while we waited for the lock
            if ended is None:
                first = active.current_event(participant.secagg_id)
                active.watchers.setdefault(participant.secagg_id, set()).add(queue)
        if ended is not None:
            yield ended
            return
        try:
            yield first
            while True:
                event = await queue.get()
                if event.retired:
                    raise CoordinatorError(
                        ErrorCode.STORE_UNAVAILABLE,
                        f"round {round_id} was rebuilt from the store; watch it again",
                    )
                yield event
                if event.outcome is not None:
                    return
        finally:
            active.watchers.get(participant.secagg_id, set()).discard(queue)

    async def submit(
        self,
        client_id: int,
        round_id: str,
        phase: RoundPhase,
        build: Callable[[ActiveRound, Participant], tuple[ClientMessage, Callable[[], AddResult]]],
    ) -> None:
        """Check, sum in memory, store, then return (the caller acknowledges).

        ``build`` makes the secure-aggregation message and a function that stores its
        record. A message the aggregation refuses raises ``PROTOCOL_VIOLATION`` and is not
        stored.
        """
        active, participant = self._require(client_id, round_id, phase)
        async with active.lock:
            current, participant = self._require(client_id, round_id, phase)
            _check_same(active, current)
            message, store_record = build(active, participant)
            try:
                active.aggregation.receive(message)
            except SecAggError as exc:
                if participant.secagg_id not in active.aggregation.alive:
                    await self._refused_and_dropped(active, participant, phase, exc)
                raise _protocol_error(exc) from exc
            try:
                await asyncio.to_thread(store_record)
            except StoreError as exc:
                self._fail(active, f"{STORE_FAILURE}:{exc.code.value}")
                raise
            active.update_ready()

    async def _refused_and_dropped(
        self, active: ActiveRound, participant: Participant, phase: RoundPhase, exc: SecAggError
    ) -> None:
        """The aggregation refused a message and dropped its sender (an advert with a key no
        neighbour can use): record the drop, so a restart replays it (docs/protocol.md)."""
        reason = DropReason.INVALID_MESSAGE.value
        log.warning(
            "round %s: client %d dropped (%s): %s",
            active.round_id,
            participant.client_id,
            reason,
            exc.message,
        )
        self.metrics.dropouts.labels(phase.value, reason).inc()
        try:
            await asyncio.to_thread(
                self.store.drop_participant, active.round_id, participant.secagg_id, reason=reason
            )
        except StoreError as store_exc:
            self._fail(active, f"{STORE_FAILURE}:{store_exc.code.value}")
            raise
        active.update_ready()

    def _fail(self, active: ActiveRound, reason: str) -> None:
        """An accepted message could not be stored: the round cannot be trusted to replay."""
        log.error("round %s must abort: %s", active.round_id, reason)
        active.failure = reason
        active.update_ready()

    async def client_abort(
        self, client_id: int, round_id: str, phase: RoundPhase, reason: str
    ) -> None:
        active, participant = self._require(client_id, round_id, phase)
        if phase is RoundPhase.MASKED_INPUT and participant.secagg_id in active.complete:
            raise CoordinatorError(
                ErrorCode.WRONG_PHASE,
                "your masked input is already summed; the round needs you to stay",
            )
        try:
            abort_reason = AbortReason(reason)
        except ValueError:
            abort_reason = AbortReason.CANCELLED
        label = f"client_aborted:{abort_reason.value}"

        def build(a: ActiveRound, p: Participant) -> tuple[ClientMessage, Callable[[], AddResult]]:
            def store_it() -> AddResult:
                self.store.drop_participant(round_id, p.secagg_id, reason=label)
                return AddResult.ADDED

            return ClientAbort(
                round_id=round_id, client_id=p.secagg_id, reason=abort_reason
            ), store_it

        await self.submit(client_id, round_id, phase, build)
        log.info("client %d left round %s: %s", client_id, round_id, reason)

    async def upload_chunk(
        self, client_id: int, round_id: str, phase: RoundPhase, chunk_index: int, data: bytes
    ) -> UploadProgress:
        """Stage one chunk durably; once all are durable, sum the input."""
        active, participant = self._require(client_id, round_id, phase)
        if phase is not RoundPhase.MASKED_INPUT:
            raise CoordinatorError(
                ErrorCode.WRONG_PHASE, "masked inputs belong to phase masked_input"
            )
        settings = active.settings
        itemsize = settings.layout.dtype.itemsize
        expected = settings.chunk_length(chunk_index) * itemsize
        if len(data) != expected:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"chunk {chunk_index} must hold {expected} bytes, got {len(data)}",
            )
        secagg = participant.secagg_id
        digest = hashlib.sha256(data).hexdigest()
        async with active.upload_lock(secagg):
            await self._stage_chunk(active, secagg, chunk_index, digest, data)
        if (
            len(active.receipts.get(secagg, {})) == settings.total_chunks
            and secagg not in active.complete
        ):
            await self._complete_input(active, participant)
        return self.upload_progress(client_id, round_id)

    async def _stage_chunk(
        self, active: ActiveRound, secagg: int, chunk_index: int, digest: str, data: bytes
    ) -> None:
        """Write one chunk to the spool, durably, and store its receipt (under the
        participant's upload lock: a chunk is checked, written and recorded as one step)."""
        settings = active.settings
        itemsize = settings.layout.dtype.itemsize
        round_id = active.round_id
        receipts = active.receipts.setdefault(secagg, {})
        known = receipts.get(chunk_index)
        if known is not None and known != digest:
            raise CoordinatorError(
                ErrorCode.CONFLICT, f"chunk {chunk_index} was already received with other bytes"
            )
        if known is None and secagg not in active.complete:
            offset = chunk_index * settings.chunk_elements * itemsize
            await asyncio.to_thread(
                self.spool.write_chunk, round_id, secagg, offset_bytes=offset, data=data
            )
            await asyncio.to_thread(
                self.store.add_input_chunk,
                InputChunkRecord(
                    round_id=round_id, secagg_id=secagg, chunk_index=chunk_index, sha256=digest
                ),
            )
            receipts[chunk_index] = digest
            self.metrics.received_bytes.labels("masked_input").inc(len(data))

    async def _complete_input(self, active: ActiveRound, participant: Participant) -> None:
        async with active.lock:
            secagg = participant.secagg_id
            if secagg in active.complete:
                return
            current, _ = self._require(
                participant.client_id, active.round_id, RoundPhase.MASKED_INPUT
            )
            _check_same(active, current)
            try:
                await asyncio.to_thread(self.store.mark_input_complete, active.round_id, secagg)
            except StoreError as exc:
                if exc.code is ErrorCode.WRONG_PHASE:
                    raise
                self._fail(active, f"{STORE_FAILURE}:{exc.code.value}")
                raise
            session_id = getattr(active.aggregation, "session_id", b"")
            try:
                await asyncio.to_thread(self._feed_input, active, secagg, session_id)
            except SecAggError as exc:
                self._fail(active, "input_unreadable")
                raise _protocol_error(exc) from exc
            active.complete.add(secagg)
            active.update_ready()

    def _feed_input(self, active: ActiveRound, secagg: int, session_id: bytes) -> None:
        for message in input_messages(active.settings, self.spool, secagg, session_id):
            active.aggregation.receive(message)

    def upload_progress(
        self, client_id: int, round_id: str, seen: RoundPhase | None = None
    ) -> UploadProgress:
        active, participant = self._require(client_id, round_id, None)
        _check_reached(active, seen)
        received = tuple(sorted(active.receipts.get(participant.secagg_id, {})))
        return UploadProgress(
            round_id=round_id,
            total_chunks=active.settings.total_chunks,
            received=received,
            complete=participant.secagg_id in active.complete,
            phase=active.phase,
        )

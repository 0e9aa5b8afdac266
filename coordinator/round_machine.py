"""The round machine: the one object the gRPC service talks to about rounds.

It puts together the parts of the round layer (docs/architecture.md, section 3):

- the waiting room (``coordinator.waiting_room``): check-ins and cohort selection;
- the driver (``coordinator.driver``): opens rounds, closes phases, commits or aborts, and
  survives store and blob faults; its events go to a listener that logs and counts them;
- the pure round state (``coordinator.round_state``), wrapped with its locks and watch
  streams in ``coordinator.active_round``;
- ingest (``coordinator.ingest``): masked-input chunks to the spool and the sum.

Here are the agent-facing calls: one per RPC. Each checks that the caller may act on the
open round in the phase it names. A message goes through the round state (checked and
summed in memory), then its record is stored (the record's type decides the write), and
only then does the call return, so an acknowledged message survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from coordinator.active_round import ActiveRound
from coordinator.blobs import BlobStore, InputSpool
from coordinator.config import CoordinatorConfig
from coordinator.domain import Client, Participant, ParticipantStatus, RoundOutcome, RoundPhase
from coordinator.driver import RoundDriver, utcnow
from coordinator.errors import CoordinatorError, ErrorCode, StoreError
from coordinator.ingest import Ingest, UploadProgress
from coordinator.listener import ObservingListener, RoundListener
from coordinator.metrics import Metrics
from coordinator.model_state import ModelState
from coordinator.reasons import Dropped
from coordinator.replay import AgentRecord, DropRecord
from coordinator.round_settings import RoundSettings
from coordinator.round_state import RoundEvent, RoundState
from coordinator.store import Store
from coordinator.waiting_room import Assignment, RetryAfter, WaitingRoom
from secure_agg import ClientAbort, ClientMessage

__all__ = ["Assignment", "RetryAfter", "RoundMachine", "UploadProgress"]

log = logging.getLogger(__name__)

Parse = Callable[[RoundState, Participant], tuple[ClientMessage, AgentRecord]]
"""Turns a request into its secure-aggregation message and its record, for one participant."""


def _stale(round_id: str, held: ActiveRound | None) -> CoordinatorError:
    return CoordinatorError(
        ErrorCode.STALE_ROUND,
        f"round {round_id} is not the open round ({held.round_id if held else 'none is open'})",
    )


def _rebuilt(round_id: str) -> CoordinatorError:
    return CoordinatorError(
        ErrorCode.STORE_UNAVAILABLE, f"round {round_id} is being rebuilt from the store; retry"
    )


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
        listener: RoundListener | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.listener: RoundListener = (
            listener if listener is not None else ObservingListener(metrics)
        )
        rng = rng if rng is not None else random.SystemRandom()
        self.room = WaitingRoom(store=store, config=config, metrics=metrics, rng=rng)
        self.driver = RoundDriver(
            store=store,
            blobs=blobs,
            spool=spool,
            model=model,
            config=config,
            room=self.room,
            listener=self.listener,
            clock=clock,
            rng=rng,
        )
        self.ingest = Ingest(store=store, spool=spool, metrics=metrics, require=self._require)
        self.on_fatal: Callable[[BaseException], None] | None = None
        """Called once if the driver dies of an error it cannot handle (the server exits)."""
        self._task: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None

    @property
    def active(self) -> ActiveRound | None:
        return self.driver.active

    @property
    def idle(self) -> asyncio.Event:
        """Set once the configured rounds are all committed."""
        return self.driver.idle

    @property
    def serving(self) -> bool:
        """False while the driver retries a fault."""
        return self.driver.serving

    @property
    def on_health(self) -> Callable[[bool], None] | None:
        return self.driver.on_health

    @on_health.setter
    def on_health(self, callback: Callable[[bool], None] | None) -> None:
        self.driver.on_health = callback

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare version 0 or check the stored one, resume an open round, start driving."""
        await self.driver.prepare()
        latest = await asyncio.to_thread(self.store.latest_version)
        assert latest is not None
        self.metrics.model_version.set(latest.version)
        self.metrics.configured_rounds.set(self.config.rounds)
        self._task = asyncio.create_task(self.driver.run(), name="round-driver")
        self._task.add_done_callback(self._driver_ended)
        self._gauges = asyncio.create_task(self.room.keep_gauges(), name="fleet-gauges")

    async def stop(self) -> None:
        """Stop driving rounds; let evaluations of committed versions finish (up to 60 s)."""
        await self.driver.finish_evaluations(timeout=60)
        for task in (self._task, self._gauges):
            if task is None:
                continue
            if task.done():  # a driver that died was reported by _driver_ended already
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.room.cancel()

    def _driver_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        self.listener.driver_died(self.driver.stage, exc)
        self.driver.set_serving(False)
        if self.on_fatal is not None:
            self.on_fatal(exc)

    # --- agent-facing -------------------------------------------------------------------

    def seen(self, client_id: int) -> None:
        self.room.seen(client_id)

    def identity_key(self, client_id: int) -> bytes:
        """The enrolled identity key of a participant of the open round."""
        key = self.driver.identity_key(client_id)
        if key is None:
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT, f"client {client_id} is not in the open round"
            )
        return key

    async def check_in(self, client: Client, *, task: str, wait: float) -> Assignment | RetryAfter:
        """An assignment once a round selects ``client``, or when to come back."""
        if task and task != self.config.task:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"this coordinator trains task {self.config.task!r}, not {task!r}",
            )
        active = self.active
        if active is not None and client.client_id in active.state.participants:
            p = active.state.participants[client.client_id]
            if p.secagg_id in active.state.aggregation.alive:
                return Assignment(active.round_id, p.secagg_id, active.phase)
        return await self.room.check_in(client, wait=wait)

    def _require(
        self, client_id: int, round_id: str, phase: RoundPhase | None
    ) -> tuple[ActiveRound, Participant]:
        active = self.active
        if active is None or active.round_id != round_id:
            raise _stale(round_id, active)
        if active.retired:
            raise _rebuilt(round_id)
        return active, active.state.member(client_id, phase)

    def round_settings(
        self, client_id: int, round_id: str, seen: RoundPhase | None = None
    ) -> tuple[RoundSettings, Participant, datetime, RoundPhase]:
        """The open round's settings for a participant, when it started, and its phase."""
        active, participant = self._require(client_id, round_id, None)
        active.state.check_reached(seen)
        return active.state.settings, participant, active.state.round.started_at, active.phase

    def round_blobs(self, client_id: int, round_id: str, seen: RoundPhase | None) -> set[str]:
        """The blobs (sha256) a participant of the open round may download."""
        active, _ = self._require(client_id, round_id, None)
        active.state.check_reached(seen)
        s = active.state.settings
        return {s.model_sha256, s.global_update_sha256, s.second_moment_sha256}

    async def watch(
        self, client_id: int, round_id: str, seen: RoundPhase | None = None
    ) -> AsyncIterator[RoundEvent]:
        """The round's events for ``client_id``: the current phase first, then each change."""
        active = self.active
        if active is None or active.round_id != round_id:
            yield await self._ended_event(client_id, round_id)
            return
        if active.retired:
            raise _rebuilt(round_id)
        participant = active.state.participants.get(client_id)
        if participant is None:
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT, f"client {client_id} is not in round {round_id}"
            )
        active.state.check_reached(seen)
        async for event in active.stream(participant.secagg_id):
            yield event

    async def _ended_event(self, client_id: int, round_id: str) -> RoundEvent:
        """How a round that is not open here ended; only its own cohort may learn it."""
        round_ = await asyncio.to_thread(self.store.get_round, round_id)
        participant = await asyncio.to_thread(self.store.get_participant, round_id, client_id)
        if round_.is_open:
            raise CoordinatorError(ErrorCode.STALE_ROUND, f"round {round_id} is not being led here")
        if participant.status is ParticipantStatus.DROPPED:
            # its outcome is not this participant's: it must not take the round for its own
            phase = participant.dropped_in.value if participant.dropped_in else "?"
            raise CoordinatorError(
                ErrorCode.NOT_IN_COHORT,
                f"client {client_id} was dropped from round {round_id} in phase {phase} "
                f"({participant.drop_reason}); the round has ended",
            )
        committed = round_.outcome is RoundOutcome.COMMITTED
        return RoundEvent(
            round_id=round_id,
            phase=round_.phase,
            outcome=round_.outcome,
            model_version=round_.model_version + 1 if committed else round_.model_version,
            reason=round_.abort_reason,
        )

    def _resent(self, client_id: int, round_id: str, phase: RoundPhase) -> bool:
        """Whether this is a resend of a message the open round accepted in a phase it has
        passed (``RoundState.answered``): acknowledged again, not read."""
        active = self.active
        if active is None or active.round_id != round_id or active.retired:
            return False
        if not active.state.answered(client_id, phase):
            return False
        log.info(
            "round %s: client %d sent its %s message again after the phase closed; "
            "acknowledged as a duplicate",
            round_id,
            client_id,
            phase.value,
        )
        return True

    async def submit(
        self,
        client_id: int,
        round_id: str,
        phase: RoundPhase,
        parse: Parse,
        *,
        carries: tuple[str, RoundPhase] | None = None,
    ) -> None:
        """Check, sum in memory, store, then return (the caller acknowledges).

        A message the aggregation refuses raises ``PROTOCOL_VIOLATION`` and is not stored;
        if the refusal dropped its sender, the drop is stored first. A resend for a phase the
        round has passed is acknowledged without being read. ``carries`` is the RPC and the
        phase whose message it carries: a request that names another phase is refused
        (INVALID_ARGUMENT) once its sender is known to be in the round, before the resend
        check, which would otherwise take it for a resend of what that phase accepted.
        """
        if carries is not None and carries[1] is not phase:
            method, belongs_to = carries
            self._require(client_id, round_id, None)  # an outsider is refused as one
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"{method} carries a {belongs_to.value} message, but the request names phase "
                f"{phase.value}",
            )
        await self._record(client_id, round_id, phase, parse, resend=True)

    async def _record(
        self, client_id: int, round_id: str, phase: RoundPhase, parse: Parse, *, resend: bool
    ) -> None:
        """``submit``; ``resend``: a message for a passed phase is acknowledged unread."""
        if resend and self._resent(client_id, round_id, phase):
            return
        active, _ = self._require(client_id, round_id, phase)
        async with active.lock:
            if resend and self._resent(client_id, round_id, phase):
                return  # the phase closed while this call waited for the lock
            current, participant = self._require(client_id, round_id, phase)
            if current is not active:
                raise CoordinatorError(
                    ErrorCode.STORE_UNAVAILABLE,
                    f"round {round_id} was rebuilt from the store while this call waited; retry",
                )
            state = active.state
            message, record = parse(state, participant)
            received = state.receive(participant, message)
            if received.drop is not None:
                assert received.refusal is not None
                self.listener.refused_and_dropped(
                    state, participant, received.drop, received.refusal
                )
                record = DropRecord(round_id, participant.secagg_id, received.drop)
            elif received.refusal is not None:
                raise received.refusal
            # stored with the others queued meanwhile, in one transaction, after the lock
            # is released; acknowledged once that transaction commits
            written = active.writes.submit(record)
        try:
            await asyncio.shield(written)
        except StoreError as exc:  # the state was marked: the next close rebuilds the round
            log.error(
                "round %s: an accepted message from client %d could not be stored (%s); "
                "the round is rebuilt from the store",
                round_id,
                client_id,
                exc,
            )
            raise
        if received.refusal is not None:
            raise received.refusal

    async def client_abort(
        self, client_id: int, round_id: str, phase: RoundPhase, reason: str
    ) -> None:
        """A participant leaves the round (AbortRound)."""
        active, participant = self._require(client_id, round_id, phase)
        active.state.may_leave(participant, phase)
        dropped = Dropped.client_left(reason)

        def parse(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            assert dropped.client_reason is not None
            message = ClientAbort(
                round_id=round_id, client_id=p.secagg_id, reason=dropped.client_reason
            )
            return message, DropRecord(round_id, p.secagg_id, dropped)

        await self._record(client_id, round_id, phase, parse, resend=False)
        log.info("client %d left round %s: %s", client_id, round_id, reason)

    async def upload_chunk(
        self, client_id: int, round_id: str, phase: RoundPhase, chunk_index: int, data: bytes
    ) -> UploadProgress:
        """Stage one chunk durably; once all are durable, sum the input."""
        return await self.ingest.upload_chunk(client_id, round_id, phase, chunk_index, data)

    def upload_progress(
        self, client_id: int, round_id: str, seen: RoundPhase | None = None
    ) -> UploadProgress:
        return self.ingest.progress(client_id, round_id, seen)

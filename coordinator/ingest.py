"""Ingest of masked inputs: chunks to the spool, their receipts, and the sum.

Each chunk is checked for its size, written to the round's input spool at its offset and
fsynced, its receipt (sha256) stored, and only then acknowledged. A retried chunk with the
same bytes is acknowledged again without a write; other bytes for a durable chunk are
refused. Once every chunk of a participant's input is durable, the input is marked complete
in the store and read back from the spool into the sum, so a phase never closes over half
an input (docs/architecture.md, section 5).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.active_round import ActiveRound
from coordinator.blobs import InputSpool
from coordinator.domain import InputChunkRecord, Participant, RoundPhase
from coordinator.errors import CoordinatorError, ErrorCode, StoreError
from coordinator.metrics import Metrics
from coordinator.reasons import RoundAbortReason
from coordinator.replay import input_messages
from coordinator.store import Store
from secure_agg import SecAggError

__all__ = ["Ingest", "UploadProgress"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadProgress:
    round_id: str
    total_chunks: int
    received: tuple[int, ...]
    complete: bool
    phase: RoundPhase  # the round's phase when reported


Require = Callable[[int, str, RoundPhase | None], tuple[ActiveRound, Participant]]
"""The round machine's check that a client may act on the open round (in a phase)."""


class Ingest:
    """Stages masked-input chunks durably and sums complete inputs."""

    def __init__(
        self, *, store: Store, spool: InputSpool, metrics: Metrics, require: Require
    ) -> None:
        self.store = store
        self.spool = spool
        self.metrics = metrics
        self.require = require

    async def upload_chunk(
        self, client_id: int, round_id: str, phase: RoundPhase, chunk_index: int, data: bytes
    ) -> UploadProgress:
        """Stage one chunk durably; once all are durable, sum the input."""
        active, participant = self.require(client_id, round_id, phase)
        if phase is not RoundPhase.MASKED_INPUT:
            raise CoordinatorError(
                ErrorCode.WRONG_PHASE, "masked inputs belong to phase masked_input"
            )
        settings = active.state.settings
        expected = settings.chunk_length(chunk_index) * settings.layout.dtype.itemsize
        if len(data) != expected:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"chunk {chunk_index} must hold {expected} bytes, got {len(data)}",
            )
        secagg = participant.secagg_id
        digest = hashlib.sha256(data).hexdigest()
        async with active.upload_lock(secagg):
            await self._stage(active, secagg, chunk_index, digest, data)
        if active.state.input_ready(secagg):
            await self._complete(active, participant)
        return self.progress(client_id, round_id)

    async def _stage(
        self, active: ActiveRound, secagg: int, chunk_index: int, digest: str, data: bytes
    ) -> None:
        """Write one chunk to the spool, durably, and store its receipt (under the
        participant's upload lock: a chunk is checked, written and recorded as one step)."""
        state = active.state
        if not state.chunk_is_new(secagg, chunk_index, digest):
            return
        offset = chunk_index * state.settings.chunk_elements * state.settings.layout.dtype.itemsize
        await asyncio.to_thread(
            self.spool.write_chunk, active.round_id, secagg, offset_bytes=offset, data=data
        )
        await asyncio.to_thread(
            self.store.add_input_chunk,
            InputChunkRecord(
                round_id=active.round_id, secagg_id=secagg, chunk_index=chunk_index, sha256=digest
            ),
        )
        state.chunk_stored(secagg, chunk_index, digest)
        self.metrics.received_bytes.labels("masked_input").inc(len(data))

    async def _complete(self, active: ActiveRound, participant: Participant) -> None:
        async with active.lock:
            state, secagg = active.state, participant.secagg_id
            if not state.input_ready(secagg):
                return  # a concurrent call summed it first
            current, _ = self.require(
                participant.client_id, active.round_id, RoundPhase.MASKED_INPUT
            )
            if current is not active:
                raise CoordinatorError(
                    ErrorCode.STORE_UNAVAILABLE,
                    f"round {active.round_id} was rebuilt from the store while this call "
                    "waited; retry",
                )
            try:
                await asyncio.to_thread(self.store.mark_input_complete, active.round_id, secagg)
            except StoreError as exc:
                # The mark may have committed before the error: rebuild the round from the
                # store, which knows. Until the input is summed, ``progress`` asks the agent
                # for its last chunk again, whose arrival completes it.
                if exc.code is not ErrorCode.WRONG_PHASE:
                    log.error(
                        "round %s: client %d's input is durable but could not be marked "
                        "complete (%s); the round is rebuilt from the store",
                        active.round_id,
                        participant.client_id,
                        exc,
                    )
                    state.store_failed(exc.code)
                    active.update_ready()
                raise
            try:
                await asyncio.to_thread(
                    state.feed_input,
                    secagg,
                    input_messages(state.settings, self.spool, secagg, state.session_id),
                )
            except SecAggError as exc:
                log.error(
                    "round %s must abort: client %d's durable input is unreadable: %s",
                    active.round_id,
                    participant.client_id,
                    exc,
                )
                state.fail(RoundAbortReason.INPUT_UNREADABLE)
                active.update_ready()
                raise CoordinatorError(ErrorCode.PROTOCOL_VIOLATION, f"{exc}") from exc
            active.update_ready()

    def progress(
        self, client_id: int, round_id: str, seen: RoundPhase | None = None
    ) -> UploadProgress:
        """Which chunks are durable. An input whose chunks are all durable but which is not
        summed yet (marking it complete failed) is reported without its last chunk, so the
        agent sends that one again and its arrival completes the input."""
        active, participant = self.require(client_id, round_id, None)
        state = active.state
        state.check_reached(seen)
        secagg = participant.secagg_id
        received = sorted(state.receipts.get(secagg, {}))
        if state.input_ready(secagg):
            received = received[:-1]
        return UploadProgress(
            round_id=round_id,
            total_chunks=state.settings.total_chunks,
            received=tuple(received),
            complete=secagg in state.complete,
            phase=active.phase,
        )

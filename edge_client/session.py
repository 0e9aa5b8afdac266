"""One round, from the agent's side: download, secure aggregation, upload, unmask.

``RoundSession.run`` takes an assignment and drives the round to its end:

1. fetch the round configuration, and open the ``WatchRound`` stream, which delivers each
   phase's opening message as soon as the phase starts;
2. download x, ΔG and v̄ by content hash (resuming by chunk, checking sha256), while the
   key phases run;
3. answer each phase through the ``secure_agg`` client state machine: advertise keys, share
   keys, then compute the update (``compute``, run in a thread), quantize it, mask it and
   upload it in chunks (resuming from what the coordinator says is durable), then sign the
   survivor set and reveal the shares the protocol allows;
4. return how the round ended.

Calls that fail because the coordinator is unreachable are retried with exponential backoff
and jitter until the round's deadline (``edge_client.retry``: ``ROUND`` for calls, the watch
stream and uploads, ``DOWNLOAD`` for downloads); the coordinator makes every call
idempotent. If the watch stream breaks, it is reopened, and the coordinator starts it again
with the current phase's message (one the state machine already handled is logged and
ignored).

If the coordinator drops the agent from the round, or the state machine aborts (a lying
server), the session ends and says so; its keys die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client import wire
from edge_client.errors import EdgeError
from edge_client.outcome import Outcome, RoundResult, SessionError
from edge_client.retry import DOWNLOAD, ROUND, Retrier, call_with_retry
from edge_client.transfers import download_blob, upload_vector
from fedadamw.errors import FedAdamWError
from secure_agg import (
    AbortReason,
    ClientAbort,
    ClientAborted,
    ClientCompleted,
    ClientMaskedInput,
    ClientState,
    ConsistencySignature,
    ErrorCode,
    MaskedInput,
    SecAggError,
    SegmentLayout,
    SessionConfig,
    ShareKeys,
    UnmaskResponse,
    encode,
    start_client,
)
from secure_agg import AdvertiseKeys as SecAggAdvertise
from secure_agg.threshold import DEFAULT_CORRUPT_RATE
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

__all__ = [
    "Outcome",
    "RoundInputs",
    "RoundResult",
    "RoundSession",
    "SessionError",
    "UpdateFn",
]

log = logging.getLogger(__name__)

_ABORT_HINTS = {
    AbortReason.UNSAFE_THRESHOLD: (
        " (the coordinator set a threshold that a lying coordinator, helped by --corrupt-rate"
        " of the cohort, could use to unmask this device's update; nothing was revealed)"
    ),
}

T = TypeVar("T")
STAGES = ("download", "keys", "training", "quantize", "masking", "upload", "unmask")


@dataclass(frozen=True, eq=False)
class RoundInputs:
    """What the update computation gets: the round's configuration and its three vectors.

    ``model`` and ``global_update`` hold d float32 values of the flat layout;
    ``second_moment`` holds the B float64 block means (B may be 0).
    """

    config: pb.RoundConfig
    model: np.ndarray
    global_update: np.ndarray
    second_moment: np.ndarray


UpdateFn = Callable[[RoundInputs], Mapping[str, np.ndarray]]
"""Returns the values to quantize by segment name: ``delta``, ``second_moment`` (when the
layout has it) and ``weight``."""


def _from_coordinator(what: str, parse: Callable[[Any], T], text: str) -> T:
    """``parse`` of the JSON ``text`` the coordinator sent; a refusal of the round (not a
    crash of the agent) when it is not JSON or not a valid ``what``."""
    try:
        return parse(json.loads(text))
    except (ValueError, SecAggError) as exc:
        raise SessionError(
            Outcome.REFUSED, f"the coordinator sent an unreadable {what}: {exc}"
        ) from exc


class RoundSession:
    """Drives one assigned round. Create one per assignment; ``run`` once."""

    def __init__(
        self,
        *,
        stub: pb_grpc.EdgeServiceStub,
        identity_key: Ed25519PrivateKey,
        assignment: pb.RoundAssignment,
        compute: UpdateFn,
        cache_dir: Path,
        check_config: Callable[[pb.RoundConfig], None] | None = None,
        corrupt_rate: float = DEFAULT_CORRUPT_RATE,
        metadata: Sequence[tuple[str, str]] = (),
        progress: Callable[[str, int, int], None] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.stub = stub
        self.identity_key = identity_key
        self.assignment = assignment
        self.round_id = assignment.round_id
        self.compute = compute
        self.cache_dir = cache_dir
        self.check_config = check_config
        self.corrupt_rate = corrupt_rate
        self.metadata = tuple(metadata)
        self.progress = progress or (lambda what, done, total: None)
        self.rng = rng or random.Random()
        self.sleep = sleep or asyncio.sleep  # between retries
        self.deadline = time.monotonic() + 3600.0
        self.state: ClientState | None = None
        self.config: pb.RoundConfig | None = None
        self._uploaded = False  # plain rounds: the input went up (events may repeat)
        self._left = False  # the coordinator was told we leave the round
        self.downloaded_bytes = 0  # over the network (the cache excluded)
        # seconds this agent spent, by stage (its own work and calls, not waiting for others)
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.uploaded_bytes = 0
        # the latest phase seen: the assignment's, then each event's
        self.phase: pb.Phase = assignment.phase or pb.PHASE_ADVERTISE_KEYS

    def _ref(self) -> pb.RoundRef:
        """This round, and the latest phase this agent has seen of it."""
        return pb.RoundRef(round_id=self.round_id, phase=self.phase)

    # --- calls with retry ----------------------------------------------------------------

    def _retrier(self, what: str, *, action: str = "retrying", download: bool = False) -> Retrier:
        """Retries under this round's policy, until its deadline."""
        return Retrier(
            DOWNLOAD if download else ROUND,
            what=what,
            action=action,
            deadline=self.deadline,
            rng=self.rng,
            sleep=self.sleep,
        )

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retry(
            call, ROUND, what=what, deadline=self.deadline, rng=self.rng, sleep=self.sleep
        )

    async def _send_phase(self, what: str, call: Callable[[], Awaitable[object]]) -> None:
        """A phase's message, through ``_call``'s retries.

        An attempt that failed on the way may still have been kept, and if it closed the
        phase, the resend finds the round past it: FAILED_PRECONDITION then means "maybe
        accepted", not "dropped", and the round's event stream tells which (the next phase
        opens with a message for this agent, or the round's end names its outcome).
        """
        resent = False

        async def attempt() -> object:
            nonlocal resent
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if resent and exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                    log.info(
                        "round %s: the resent %s found the round moved on (%s); the first "
                        "one may have closed the phase, so the round's events decide",
                        self.round_id,
                        what,
                        exc.details(),
                    )
                    return None
                resent = True
                raise

        await self._call(what, attempt)

    # --- the round ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] += time.perf_counter() - started

    async def run(self) -> RoundResult:
        """Drive the round to its end; never raises for a round that went wrong."""
        try:
            return await self._run()
        except SessionError as exc:
            level = logging.WARNING if exc.outcome is Outcome.REFUSED else logging.INFO
            log.log(level, "round %s: %s (%s)", self.round_id, exc.outcome.value, exc.reason)
            if exc.outcome in (Outcome.REFUSED, Outcome.ABORTED) and not self._left:
                await self.leave("cancelled")  # so that the coordinator stops offering it
            return RoundResult(self.round_id, exc.outcome, reason=exc.reason)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            outcome = (
                Outcome.DROPPED
                if code in {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED}
                else Outcome.ABORTED
            )
            log.info(
                "round %s: %s after %s: %s", self.round_id, outcome.value, code.name, exc.details()
            )
            if outcome is Outcome.ABORTED and not self._left:
                await self.leave("cancelled")  # so that the coordinator stops offering it
            return RoundResult(self.round_id, outcome, reason=f"{code.name}: {exc.details()}")
        finally:
            self.state = None  # the round's keys die here

    async def _run(self) -> RoundResult:
        config = await self._call(
            "GetRoundConfig",
            lambda: self.stub.GetRoundConfig(self._ref(), metadata=self.metadata),
        )
        self.config = config
        if config.phase:
            self.phase = config.phase
        if config.secure_aggregation and config.phase not in (
            pb.PHASE_UNSPECIFIED,
            pb.PHASE_ADVERTISE_KEYS,
        ):
            # This agent's keys for the round died with an earlier run of it (a restart):
            # it cannot go on, so it leaves, and the coordinator stops offering it the round.
            raise SessionError(
                Outcome.REFUSED,
                f"the round is in phase {pb.Phase.Name(config.phase)}; the keys this agent "
                "advertised for it are gone (it restarted), so it leaves the round",
            )
        if config.deadlines:
            last = max(d.unix_ms for d in config.deadlines) / 1000.0
            self.deadline = time.monotonic() + max(5.0, last - time.time()) + 30.0
        if self.check_config is not None:
            self.check_config(config)
        layout = _from_coordinator(
            "quantization layout", SegmentLayout.from_dict, config.quantization_json
        )
        downloads = asyncio.ensure_future(self._download_all(config))
        # A round that ends before the masked-input phase never awaits the downloads: their
        # failure, if any, is read here instead of reaching the loop's "never retrieved".
        downloads.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            if config.secure_aggregation:
                session = _from_coordinator(
                    "secure-aggregation session",
                    SessionConfig.from_dict,
                    config.secagg_session_json,
                )
                if session.round_id != self.round_id:
                    raise SessionError(Outcome.REFUSED, "the session names another round")
                with self._timed("keys"):
                    step = start_client(
                        session,
                        client_id=config.secagg_id,
                        identity_key=self.identity_key,
                        corrupt_rate=self.corrupt_rate,
                    )
                    self.state = step.state
                    assert isinstance(step.message, SecAggAdvertise)
                    advert = wire.advertise_to_proto(step.message)
                    await self._send_phase(
                        "AdvertiseKeys",
                        lambda: self.stub.AdvertiseKeys(advert, metadata=self.metadata),
                    )
            async for event in self._events():
                result = await self._on_event(event, config, layout, downloads)
                if result is not None:
                    return result
        finally:
            if not downloads.done():
                downloads.cancel()
        raise SessionError(Outcome.ABORTED, "the round's event stream ended")

    async def _events(self) -> AsyncIterator[pb.RoundEvent]:
        """The round's events, reopening the stream when the coordinator goes away."""
        retrier = self._retrier(f"round {self.round_id}: event stream", action="reconnecting")
        while True:
            stream = self.stub.WatchRound(self._ref(), metadata=self.metadata)
            try:
                while True:
                    event = await self._next_event(stream)
                    if event is None:
                        return
                    retrier.reset()
                    yield event
                    if event.WhichOneof("event") == "finished":
                        return
            except grpc.aio.AioRpcError as exc:
                await retrier.pause(exc)
            finally:
                stream.cancel()

    async def _next_event(
        self, stream: grpc.aio.UnaryStreamCall[Any, pb.RoundEvent]
    ) -> pb.RoundEvent | None:
        """The next event, or None at the end of the stream; gives up past the deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise SessionError(Outcome.ABORTED, "the round outlived its deadlines")
        try:
            event = await asyncio.wait_for(stream.read(), timeout=remaining)
        except TimeoutError as exc:
            raise SessionError(
                Outcome.ABORTED, "no word from the coordinator before the round's deadline"
            ) from exc
        if event is grpc.aio.EOF:
            return None
        return cast(pb.RoundEvent, event)

    async def _on_event(
        self,
        event: pb.RoundEvent,
        config: pb.RoundConfig,
        layout: SegmentLayout,
        downloads: asyncio.Future[RoundInputs],
    ) -> RoundResult | None:
        self.phase = event.phase
        if event.WhichOneof("event") == "finished":
            finished = event.finished
            outcome = (
                Outcome.COMMITTED if finished.outcome == pb.OUTCOME_COMMITTED else Outcome.ABORTED
            )
            if isinstance(self.state, ClientAborted):
                outcome = Outcome.REFUSED
            return RoundResult(self.round_id, outcome, finished.model_version, finished.reason)
        if not config.secure_aggregation:
            if event.phase == pb.PHASE_MASKED_INPUT and not self._uploaded:
                self._uploaded = True
                inputs = await downloads
                encoded = await asyncio.to_thread(self._encode, inputs, layout)
                await self._upload(config, encoded)
            return None
        message = wire.event_message(event)
        state = self.state
        if state is None or isinstance(state, ClientAborted | ClientCompleted):
            return None
        if message is None:
            if event.phase != pb.PHASE_ADVERTISE_KEYS:
                # every later phase opens with a message for each participant still in it
                raise SessionError(
                    Outcome.DROPPED, f"the coordinator went on to phase {event.phase} without us"
                )
            return None
        stage = "unmask" if event.phase >= pb.PHASE_CONSISTENCY_CHECK else "keys"
        with self._timed(stage):
            try:
                step = state.handle(message)
            except SecAggError as exc:
                if exc.code is not ErrorCode.UNEXPECTED_MESSAGE:
                    raise SessionError(
                        Outcome.REFUSED, f"secure aggregation failed: {exc}"
                    ) from exc
                # the state is unchanged: most often a phase message this agent already
                # answered, sent again when the watch stream was reopened
                log.info(
                    "round %s: ignoring a message for phase %s: %s",
                    self.round_id,
                    pb.Phase.Name(event.phase),
                    exc.message,
                )
                return None
            self.state = step.state
            outgoing = step.message
            await self._send(outgoing)
        if isinstance(self.state, ClientMaskedInput):
            inputs = await downloads
            encoded = await asyncio.to_thread(self._encode, inputs, layout)
            with self._timed("masking"):
                masked_step = await asyncio.to_thread(self.state.mask, encoded)
            self.state = masked_step.state
            masked = masked_step.message
            if not isinstance(masked, MaskedInput):
                raise SessionError(Outcome.REFUSED, "secure aggregation did not mask the input")
            await self._upload(config, np.asarray(masked.values))
        return None

    async def _send(self, outgoing: object) -> None:
        """Send what the secure-aggregation client answered (nothing, for some messages)."""
        if isinstance(outgoing, ClientAbort):
            await self.leave(outgoing.reason.value)
            hint = _ABORT_HINTS.get(outgoing.reason, "")
            raise SessionError(
                Outcome.REFUSED,
                f"secure aggregation refused the round: {outgoing.reason.value}{hint}",
            )
        if isinstance(outgoing, ShareKeys):
            request = wire.shares_to_proto(outgoing, self.round_id)
            await self._send_phase(
                "ShareKeys", lambda: self.stub.ShareKeys(request, metadata=self.metadata)
            )
        elif isinstance(outgoing, ConsistencySignature):
            sig = wire.signature_to_proto(outgoing, self.round_id)
            await self._send_phase(
                "SubmitConsistencySignature",
                lambda: self.stub.SubmitConsistencySignature(sig, metadata=self.metadata),
            )
        elif isinstance(outgoing, UnmaskResponse):
            unmask = wire.unmask_to_proto(outgoing, self.round_id)
            await self._send_phase(
                "Unmask", lambda: self.stub.Unmask(unmask, metadata=self.metadata)
            )

    async def leave(self, reason: str) -> None:
        """Tell the coordinator this agent leaves the round (best effort), so that it need
        not wait for the phase deadline. ``reason`` is a ``secure_agg.AbortReason`` value."""
        self._left = True
        request = pb.AbortRoundRequest(round_id=self.round_id, phase=self.phase, reason=reason)
        try:
            await self.stub.AbortRound(request, metadata=self.metadata, timeout=5)
        except grpc.aio.AioRpcError as exc:
            log.info(
                "round %s: could not tell the coordinator we left: %s",
                self.round_id,
                exc.code().name,
            )

    def _encode(self, inputs: RoundInputs, layout: SegmentLayout) -> np.ndarray:
        started = time.perf_counter()
        try:
            with self._timed("training"):
                values = dict(self.compute(inputs))
            with self._timed("quantize"):
                encoded = encode(layout, values)
        except SecAggError as exc:  # the coordinator's layout: not this task's update
            raise SessionError(
                Outcome.REFUSED,
                f"the round's quantization layout does not fit this task's update: {exc}",
            ) from exc
        except EdgeError as exc:  # this agent's limits, or its shutdown: leave the round
            raise SessionError(
                Outcome.REFUSED, f"the update was not computed ({exc.code.value}): {exc.message}"
            ) from exc
        except (RuntimeError, MemoryError, ArithmeticError, FedAdamWError) as exc:
            # the device's own failure (out of memory, a CUDA error, a diverged step): leave
            # the round and keep the agent; anything else is a bug and ends the agent
            log.error("round %s: local training failed: %r", self.round_id, exc, exc_info=exc)
            raise SessionError(Outcome.REFUSED, f"local training failed: {exc!r}") from exc
        log.info(
            "round %s: update computed and quantized in %.1fs",
            self.round_id,
            time.perf_counter() - started,
        )
        return encoded

    # --- transfers ----------------------------------------------------------------------

    async def _download_all(self, config: pb.RoundConfig) -> RoundInputs:
        with self._timed("download"):
            return await self._download_three(config)

    async def _download_three(self, config: pb.RoundConfig) -> RoundInputs:
        model = await self._download(config.model, "<f4")
        update = await self._download(config.global_update, "<f4")
        moment = await self._download(config.second_moment, "<f8")
        return RoundInputs(config=config, model=model, global_update=update, second_moment=moment)

    async def _download(self, ref: pb.BlobRef, dtype: str) -> np.ndarray:
        """A blob by hash (``edge_client.transfers.download_blob``)."""
        return await download_blob(
            self.stub,
            ref,
            dtype,
            cache_dir=self.cache_dir,
            request=lambda start: pb.DownloadRequest(
                sha256=ref.sha256, start_chunk=start, round_id=self.round_id, phase=self.phase
            ),
            metadata=self.metadata,
            retrier=self._retrier(f"round {self.round_id}: download", download=True),
            progress=self.progress,
            on_bytes=self._downloaded,
        )

    def _downloaded(self, size: int) -> None:
        self.downloaded_bytes += size

    def _uploaded_chunk(self, size: int) -> None:
        self.uploaded_bytes += size

    async def _upload(self, config: pb.RoundConfig, vector: np.ndarray) -> None:
        """The vector in chunks; after a failure, only the chunks not yet durable."""
        with self._timed("upload"):
            await self._upload_chunks(config, vector)

    async def _upload_chunks(self, config: pb.RoundConfig, vector: np.ndarray) -> None:
        await upload_vector(
            self.stub,
            vector,
            round_id=self.round_id,
            chunk_elements=config.chunk_elements,
            total_chunks=config.total_chunks,
            status_request=self._ref,
            metadata=self.metadata,
            retrier=self._retrier(f"round {self.round_id}: upload", action="resuming"),
            progress=self.progress,
            on_bytes=self._uploaded_chunk,
        )

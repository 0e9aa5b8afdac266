"""The agent's long-running loop: check in, take part in rounds, survive everything else.

The loop checks in (a long poll); when a round selects it, it runs the round with a
``RoundSession`` and the device's ``LocalTraining``, records how the round ended in the
state directory, and checks in again. It keeps running through:

- **an unreachable coordinator** (down, restarting, network gone): exponential backoff with
  full jitter between 1 s and 60 s (``edge_client.retry.CHECK_IN``), then it resumes
  checking in; any error but a refusal of the agent itself is retried this way;
- **its own restart mid-round**: the round's keys lived in memory only, so the coordinator
  counts the agent as dropped; the agent simply checks in again with fresh keys next round;
- **rounds it must refuse** (its limits, below): it tells the coordinator at once
  (``AbortRound``) and keeps running.

Limits: a round is refused when its model is larger than ``max_model_bytes``, when secure
aggregation is off (unless ``allow_plain``), or when it trains a task other than this
agent's. The secure-aggregation client itself refuses a threshold that a lying coordinator,
helped by ``corrupt_rate`` of the cohort, could break (``secure_agg.threshold``): it checks
once it knows how many neighbours hold its shares, before it sends any of them.

``stop`` (set on SIGTERM or SIGINT) ends the loop: a check-in is abandoned at once; a round
is abandoned at the next local step or message, with an ``AbortRound`` to the coordinator.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client import metrics as agent_metrics
from edge_client.enrollment import AGENT_CHANNEL_OPTIONS, mutual_tls_channel
from edge_client.retry import CHECK_IN, MISCONFIGURED, Retrier, tls_failure
from edge_client.session import Outcome, RoundResult, RoundSession, SessionError
from edge_client.state import LastRound, StateDir
from edge_client.training import LocalTraining
from edge_client.transfers import prune_cache, round_blobs
from secure_agg.threshold import DEFAULT_CORRUPT_RATE
from wire import INSECURE_CLIENT_HEADER
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

__all__ = [
    "AGENT_VERSION",
    "EXIT_CONFIGURATION",
    "EXIT_ENROLLMENT",
    "EXIT_REVOKED",
    "Agent",
    "Limits",
]

log = logging.getLogger(__name__)

AGENT_VERSION = "fedadamw-edge/0.1"

# Exit codes for a failure that no retry mends; a supervisor should not restart on them.
EXIT_CONFIGURATION = 2
"""The coordinator serves something else (another task, another protocol), or the agent's
own configuration or state directory is unusable."""
EXIT_REVOKED = 3
"""The coordinator revoked this agent."""
EXIT_ENROLLMENT = 4
"""The enrollment does not match the coordinator: it does not know this agent's certificate,
or its certificate is not signed by the CA in the state directory."""


def _permanent_failure(exc: grpc.aio.AioRpcError, coordinator: str) -> int | None:
    """The exit code for a check-in failure that no retry mends, after logging the
    coordinator's own message and what to do; None for a failure worth retrying."""
    code, details = exc.code(), exc.details() or ""
    if code in MISCONFIGURED:
        log.error(
            "the coordinator at %s refuses this agent's request (%s): %s; change the agent's "
            "configuration (--task, the agent's version) and start it again",
            coordinator,
            code.name,
            details,
        )
        return EXIT_CONFIGURATION
    if code is grpc.StatusCode.PERMISSION_DENIED:
        log.error(
            "the coordinator at %s refuses this agent (%s): %s; enroll it again with a new "
            "token if it should take part",
            coordinator,
            code.name,
            details,
        )
        return EXIT_REVOKED
    if code is grpc.StatusCode.UNAUTHENTICATED or tls_failure(exc):
        log.error(
            "the coordinator at %s and this agent's enrollment do not match (%s): %s; the "
            "state directory belongs to another coordinator, or the coordinator's CA changed: "
            "enroll again with a token and the CA certificate of this coordinator",
            coordinator,
            code.name,
            details,
        )
        return EXIT_ENROLLMENT
    return None


@dataclass(frozen=True)
class Limits:
    max_model_bytes: int = 256 << 20
    corrupt_rate: float = DEFAULT_CORRUPT_RATE
    allow_plain: bool = False


class Agent:
    """An enrolled agent that trains ``training``'s task on its own data."""

    def __init__(
        self,
        *,
        state: StateDir,
        training: LocalTraining,
        limits: Limits,
        metrics: agent_metrics.AgentMetrics | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.state = state
        self.training = training
        self.limits = limits
        self.metrics = metrics
        self.progress = progress
        self.stop = asyncio.Event()
        self.rounds = 0
        self.rng = random.Random()
        self._ran: collections.deque[str] = collections.deque(maxlen=64)  # rounds run here
        self._offered_again = 0  # check-ins in a row that offered a round already run

    def request_stop(self) -> None:
        self.stop.set()
        self.training.stop.set()

    def check_config(self, config: pb.RoundConfig) -> None:
        """Refuse a round that breaks this agent's limits (raises SessionError)."""
        problems = []
        if config.task != self.training.task.name:
            problems.append(
                f"it trains task {config.task!r}, this agent {self.training.task.name!r}"
            )
        if config.model.size > self.limits.max_model_bytes:
            problems.append(
                f"its model is {config.model.size} bytes, over --max-model-bytes "
                f"{self.limits.max_model_bytes}"
            )
        if not config.secure_aggregation and not self.limits.allow_plain:
            problems.append("it runs without secure aggregation (allow with --allow-plain)")
        if problems:
            raise SessionError(Outcome.REFUSED, "; ".join(problems))

    async def run(self) -> int:
        """Run until ``stop``; returns the process exit code."""
        credentials = self.state.credentials()
        info = self.state.info()
        if info.insecure:
            channel = grpc.aio.insecure_channel(info.coordinator, options=AGENT_CHANNEL_OPTIONS)
            metadata: tuple[tuple[str, str], ...] = ((INSECURE_CLIENT_HEADER, str(info.client_id)),)
        else:
            channel = mutual_tls_channel(info.coordinator, credentials)
            metadata = ()
        stub = pb_grpc.EdgeServiceStub(channel)
        backoff = Retrier(
            CHECK_IN,
            what=f"check-in at {info.coordinator}",
            sleep=self._sleep,
            level=logging.WARNING,
        )
        log.info(
            "agent %d: training %s on %s; coordinator %s",
            info.client_id,
            self.training.task.name,
            self.training.device,
            info.coordinator,
        )
        try:
            while not self.stop.is_set():
                request = pb.CheckInRequest(
                    task=self.training.task.name, agent_version=AGENT_VERSION, wait_seconds=20
                )
                try:
                    answer = await self._until_stop(
                        stub.CheckIn(request, metadata=metadata, timeout=40)
                    )
                except grpc.aio.AioRpcError as exc:
                    code = _permanent_failure(exc, info.coordinator)
                    if code is not None:
                        return code
                    self._connected(False)
                    await backoff.pause(exc)
                    continue
                if answer is None:
                    break
                backoff.reset()
                self._connected(True)
                if answer.WhichOneof("answer") == "assignment":
                    if await self._offered_again_pause(answer.assignment):
                        continue
                    await self._round(stub, answer.assignment, credentials.identity_key, metadata)
                else:
                    await self._sleep(min(float(answer.retry_after_seconds or 1), 60.0))
        finally:
            await channel.close()
        log.info("agent %d stopped after %d rounds", info.client_id, self.rounds)
        return 0

    async def _offered_again_pause(self, assignment: pb.RoundAssignment) -> bool:
        """A round this agent already ran, offered again (its leaving was not heard, or the
        round needs it to stay): do not run it twice; wait, longer each time, and check in
        again. True if it paused."""
        if assignment.round_id not in self._ran:
            self._ran.append(assignment.round_id)
            self._offered_again = 0
            return False
        delay = CHECK_IN.delay(self._offered_again, self.rng)
        self._offered_again += 1
        log.info(
            "round %s was offered again after this agent ran it; checking in again in %.1fs",
            assignment.round_id,
            delay,
        )
        await self._sleep(delay)
        return True

    async def _until_stop(self, call: Awaitable[pb.CheckInResponse]) -> pb.CheckInResponse | None:
        """Await ``call`` unless ``stop`` comes first (then cancel it and return None)."""
        task = asyncio.ensure_future(call)
        stopper = asyncio.ensure_future(self.stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task in done:
            result: pb.CheckInResponse = task.result()
            return result
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
        return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    def _connected(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.connected.set(1 if up else 0)

    async def _round(
        self,
        stub: pb_grpc.EdgeServiceStub,
        assignment: pb.RoundAssignment,
        identity_key: Ed25519PrivateKey,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        log.info("selected for round %s", assignment.round_id)
        session = RoundSession(
            stub=stub,
            identity_key=identity_key,
            assignment=assignment,
            compute=self.training,
            cache_dir=self.state.cache,
            check_config=self.check_config,
            corrupt_rate=self.limits.corrupt_rate,
            metadata=metadata,
            progress=self.progress,
        )
        started = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(session.run())
        stopper = asyncio.ensure_future(self.stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task in done:
            result = task.result()
        else:
            result = await self._abandon(session, task)
        self.rounds += 1
        elapsed = asyncio.get_running_loop().time() - started
        if self.metrics is not None:
            self.metrics.rounds.labels(result.outcome.value).inc()
            self.metrics.round_seconds.observe(elapsed)
            self.metrics.transferred_bytes.labels("download").inc(session.downloaded_bytes)
            self.metrics.transferred_bytes.labels("upload").inc(session.uploaded_bytes)
            for stage, seconds in session.timings.items():
                self.metrics.stage_seconds.labels(stage).observe(seconds)
        log.info(
            "round %s: %s%s in %.1fs",
            result.round_id,
            result.outcome.value,
            f" (model version {result.model_version})" if result.model_version else "",
            elapsed,
        )
        if result.reason:
            log.info("round %s: %s", result.round_id, result.reason)
        log.info(
            "round %s: time by stage: %s",
            result.round_id,
            ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in session.timings.items()),
        )
        self.state.save_last_round(
            LastRound(
                round_id=result.round_id,
                outcome=result.outcome.value,
                model_version=result.model_version,
                reason=result.reason,
                finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
        )
        if session.config is not None:  # else the cache still holds only an earlier round's
            # Whatever the outcome: the next round, if this one aborted, asks for these again.
            removed = prune_cache(self.state.cache, keep=round_blobs(session.config))
            if removed:
                log.info("cache: deleted %d files of earlier rounds", len(removed))

    async def _abandon(
        self, session: RoundSession, task: asyncio.Future[RoundResult]
    ) -> RoundResult:
        """Stop the round on shutdown: let the training step finish, then tell the coordinator."""
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=2.0)
        except TimeoutError:
            task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task is being cancelled too, not only the round
            log.info("round %s: abandoned in the middle of a step", session.round_id)
        else:
            return result  # it ended on its own as it was cancelled
        await session.leave("cancelled")
        return RoundResult(session.round_id, Outcome.REFUSED, reason="the agent is shutting down")

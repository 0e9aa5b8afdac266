"""Retrying calls to the coordinator: one policy type, one way to wait, one code split.

Every loop of the agent that tries a call again (checking in, a round's calls, its event
stream, downloads, uploads) goes through a :class:`Retrier` built from a
:class:`RetryPolicy`:

- **which failures are worth another try** is the policy's ``retryable`` set of gRPC status
  codes; any other code is permanent and raised at once. :data:`TEMPORARY` is the default:
  the coordinator is away or restarting (``UNAVAILABLE``), slow (``DEADLINE_EXCEEDED``) or
  asks us to slow down (``RESOURCE_EXHAUSTED``), or the call was cut on the way
  (``CANCELLED``). A coordinator that stops, with or without grace, or whose process dies,
  ends the calls in flight with ``UNAVAILABLE`` ("Cancelling all calls", "Socket closed").
  None of the coordinator's errors maps to ``CANCELLED``, and the agent's own cancellation
  of a call raises ``asyncio.CancelledError``, never an ``AioRpcError``: a ``CANCELLED``
  status therefore comes from the transport. With 1,000 agents on two cores, about one in
  five of the ``AdvertiseKeys`` calls sent while the round's downloads ran on the same
  connection ended so, without reaching the coordinator's handler (its request counts show
  none); every call is idempotent, so it is tried again (``bench_secure_cohort``);
- **how long to wait** before retry ``n`` (0 for the first): the ceiling
  ``min(cap, base · multiplier**n)``, less a random fraction of it up to ``jitter``, so each
  wait lies in ``[ceiling · (1 − jitter), ceiling]`` and never above ``cap``, and at least
  ``floor``. ``jitter = 1`` is full jitter;
- **when to give up**: after ``max_attempts`` attempts in a row without progress, once
  ``max_elapsed`` seconds have gone since the first, or when the wait would end past the
  caller's ``deadline``; the last error is raised then.

Waiting goes through an injectable ``sleep`` and ``clock``, so tests need no real time.

gRPC's channel has a reconnection backoff of its own: while it waits to reconnect, calls
fail at once with ``UNAVAILABLE`` ("failed to connect to all addresses") without reaching
the network. By default it grows 1.6× per failed connection up to 120 s, so after an outage
of a minute a restarted coordinator stayed invisible to its agents for up to a minute more,
longer than the ``restart_grace`` it gives them to come back. :data:`CHANNEL_OPTIONS` caps
it at 5 s; every channel the agent opens to the coordinator uses them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from wire import REFUSAL_TRAILER

__all__ = [
    "CHANNEL_OPTIONS",
    "CHECK_IN",
    "DOWNLOAD",
    "MISCONFIGURED",
    "REFUSED",
    "ROUND",
    "TEMPORARY",
    "Retrier",
    "RetryPolicy",
    "call_with_retry",
    "stream_ended_early",
    "tls_failure",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

TEMPORARY: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
"""Worth trying again: the coordinator is away, slow, asks us to slow down, or the transport
cut the call."""

REFUSED: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
)
"""The coordinator refuses this agent (no valid certificate, revoked): trying again won't help."""

MISCONFIGURED: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}
)
"""The coordinator says this agent asks for what it does not serve (another task, another
protocol): trying again won't help until the agent's configuration changes."""

_TLS_FAILURES = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "unknown ca",
    "bad certificate",
    "certificate unknown",
    "WRONG_VERSION_NUMBER",
)


def tls_failure(exc: grpc.aio.AioRpcError) -> bool:
    """Whether ``exc`` is a TLS handshake that failed on a certificate (the coordinator's is
    not signed by the CA this agent trusts, or it refuses this agent's): the channel says
    UNAVAILABLE, but no retry will make the certificates match."""
    if exc.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    details = exc.details() or ""
    return any(marker.lower() in details.lower() for marker in _TLS_FAILURES)


def stream_ended_early(exc: grpc.aio.AioRpcError) -> bool:
    """Whether ``exc`` is grpc.aio's report of a request stream that the coordinator ended
    (with a status of its own) while this agent was still writing to it.

    When the server answers a client-streaming call before the client has half-closed it,
    a write that races the answer fails, and grpc.aio then reports ``INTERNAL: Internal
    error from Core`` in place of the server's status, which is lost. What the server said
    can be learnt again with a stream of one message, closed at once (``upload_vector``).
    """
    return exc.code() is grpc.StatusCode.INTERNAL and "Internal error from Core" in (
        exc.details() or ""
    )


CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # gRPC's own reconnection backoff (1 s, growing 1.6× to 120 s by default) hides a
    # restarted coordinator for as long; 5 s keeps it well inside the restart grace.
    ("grpc.max_reconnect_backoff_ms", 5_000),
)
"""Channel options for every channel the agent opens to the coordinator."""


def answered(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the coordinator itself ended the call with this status (it marks its
    refusals with ``wire.REFUSAL_TRAILER``), rather than the link or gRPC failing."""
    return any(key == REFUSAL_TRAILER for key, _ in exc.trailing_metadata() or ())


def describe(exc: grpc.aio.AioRpcError) -> str:
    """A word or two on a failure, for the retry log line."""
    code = exc.code()
    if code is grpc.StatusCode.UNAVAILABLE and answered(exc):
        return "answered: not now"  # it is up, but cannot serve this now (storage, database)
    return _DESCRIBE.get(code, "error")


_DESCRIBE = {
    grpc.StatusCode.UNAVAILABLE: "unreachable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "too slow",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "asks us to slow down",
}


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of call is retried; see the module docstring."""

    base: float
    """The ceiling of the first wait, in seconds."""
    cap: float
    """No wait is longer than this."""
    jitter: float = 1.0
    """The largest fraction of a wait's ceiling drawn off at random (0: none, 1: full)."""
    multiplier: float = 2.0
    """Each retry's ceiling is this many times the one before (1: constant)."""
    floor: float = 0.0
    """No wait is shorter than this."""
    max_attempts: int | None = None
    """Attempts in a row without progress (see ``Retrier.reset``), the first included
    (None: no limit)."""
    max_elapsed: float | None = None
    """Seconds from the first attempt after which no retry starts (None: no limit)."""
    retryable: frozenset[grpc.StatusCode] = TEMPORARY

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap) or not math.isfinite(self.cap):
            raise ValueError(f"need 0 < base <= cap < inf, got base {self.base}, cap {self.cap}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        if self.multiplier < 1.0:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if not 0.0 <= self.floor <= self.cap:
            raise ValueError(f"floor must be in [0, cap], got {self.floor}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.max_elapsed is not None and not self.max_elapsed > 0:
            raise ValueError(f"max_elapsed must be positive, got {self.max_elapsed}")
        if grpc.StatusCode.OK in self.retryable:
            raise ValueError("OK is not a failure to retry")

    def retries(self, code: grpc.StatusCode) -> bool:
        """Whether a call that failed with ``code`` is worth another try."""
        return code in self.retryable

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry ``retry`` (0 for the first): grows, then ``cap``."""
        try:
            return min(self.cap, self.base * self.multiplier**retry)
        except OverflowError:
            return self.cap

    def delay(self, retry: int, rng: random.Random) -> float:
        """A jittered wait before retry ``retry``, in ``[ceiling·(1 − jitter), ceiling]``."""
        ceiling = self.ceiling(retry)
        return min(self.cap, max(self.floor, ceiling * (1.0 - self.jitter * rng.random())))


CHECK_IN = RetryPolicy(
    base=1.0,
    cap=60.0,
    jitter=1.0,
    floor=0.1,
    retryable=frozenset(grpc.StatusCode) - REFUSED - MISCONFIGURED - {grpc.StatusCode.OK},
)
"""The agent's check-in loop: full jitter from 1 s up to 60 s, forever, through every code
but a refusal of the agent itself or of its configuration (the loop survives whatever else
the coordinator does: being away, restarting, overloaded, or failing inside)."""

ROUND = RetryPolicy(base=0.3, cap=15.0, jitter=2 / 3)
"""A round's calls, its event stream and uploads: waits of 0.1–0.3 s doubling up to
5–15 s (a nominal 0.2 s doubling to 10 s, ±50 %), until the round's deadline."""

DOWNLOAD = RetryPolicy(base=1.5, cap=1.5, jitter=2 / 3, multiplier=1.0)
"""A blob download resumes after 0.5–1.5 s, every time, until the round's deadline."""


class Retrier:
    """The retries of one operation under ``policy``.

    After each failed attempt call :meth:`pause` with its error: it raises the error if the
    policy gives up on it, else logs and sleeps before the caller's next attempt. Call
    :meth:`reset` after progress, so that the next failure waits the shortest time again.
    ``deadline`` is a time of ``clock``: no wait ends after it.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        what: str,
        action: str = "retrying",
        deadline: float | None = None,
        rng: random.Random | None = None,
        sleep: Sleep | None = None,
        clock: Clock = time.monotonic,
        level: int = logging.INFO,
    ) -> None:
        self.policy = policy
        self.what = what
        self.action = action
        self.deadline = deadline
        self.rng = rng or random.Random()
        self.sleep: Sleep = sleep or asyncio.sleep
        self.clock = clock
        self.level = level
        self.started = clock()
        self.failures = 0  # since the last reset

    def next_delay(self, code: grpc.StatusCode) -> float | None:
        """Count a failure with ``code``: the wait before the next attempt, or None to give up."""
        self.failures += 1
        policy = self.policy
        if not policy.retries(code):
            return None
        if policy.max_attempts is not None and self.failures >= policy.max_attempts:
            return None
        delay = policy.delay(self.failures - 1, self.rng)
        resume = self.clock() + delay
        if self.deadline is not None and resume > self.deadline:
            return None
        if policy.max_elapsed is not None and resume - self.started > policy.max_elapsed:
            return None
        return delay

    async def pause(
        self, exc: grpc.aio.AioRpcError, *, as_code: grpc.StatusCode | None = None
    ) -> None:
        """Sleep before the next attempt, or raise ``exc`` if it is not to be retried
        (judged as ``as_code`` where given, else by its own code)."""
        code = exc.code()
        delay = self.next_delay(as_code or code)
        if delay is None:
            raise exc
        log.log(
            self.level,
            "%s: coordinator %s (%s: %s); %s in %.1fs",
            self.what,
            describe(exc),
            code.name,
            (exc.details() or "")[:200],
            self.action,
            delay,
        )
        await self.sleep(delay)

    def reset(self) -> None:
        """The operation made progress: the next failure starts the backoff again."""
        self.failures = 0


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    deadline: float | None = None,
    rng: random.Random | None = None,
    sleep: Sleep | None = None,
    clock: Clock = time.monotonic,
) -> T:
    """``await call()``, again after each failure the policy retries; raises the last one."""
    retrier = Retrier(policy, what=what, deadline=deadline, rng=rng, sleep=sleep, clock=clock)
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            await retrier.pause(exc)

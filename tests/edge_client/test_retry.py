"""The agent's retry policy and helper, in process: a fake sleep and clock, a seeded rng."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client import retry
from edge_client.agent import Agent
from edge_client.enrollment import AGENT_CHANNEL_OPTIONS
from edge_client.retry import (
    CHECK_IN,
    DOWNLOAD,
    ROUND,
    Retrier,
    RetryPolicy,
    call_with_retry,
    describe,
)
from edge_client.session import Outcome, RoundInputs, RoundSession, SessionError
from secure_agg import ErrorCode, SecAggError, SegmentLayout
from wire import REFUSAL_TRAILER
from wire.v1 import edge_pb2 as pb

Code = grpc.StatusCode
PERMANENT = sorted(set(Code) - retry.TEMPORARY - {Code.OK}, key=lambda c: c.name)


def _error(code: grpc.StatusCode, details: str = "test") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeTime:
    """A clock that only ``sleep`` moves, and the sleeps it was asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Flaky:
    """A call that fails with ``codes`` in turn, then returns ``"ok"``."""

    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes = list(codes)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise _error(self.codes.pop(0))
        return "ok"


def _run(call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(call())


# --- the policy ------------------------------------------------------------------------


def test_ceilings_grow_then_stay_at_the_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=10.0)
    assert [policy.ceiling(n) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert policy.ceiling(100_000) == 10.0  # no overflow, however long it retried
    assert RetryPolicy(base=2.0, cap=2.0, multiplier=1.0).ceiling(50) == 2.0


@pytest.mark.parametrize("policy", [CHECK_IN, ROUND, DOWNLOAD], ids=["check_in", "round", "dl"])
def test_delays_are_jittered_within_their_range_and_capped(policy: RetryPolicy) -> None:
    rng = random.Random(7)
    for n in range(40):
        ceiling = policy.ceiling(n)
        delays = [policy.delay(n, rng) for _ in range(200)]
        low = max(policy.floor, ceiling * (1 - policy.jitter))
        assert all(low <= d <= ceiling <= policy.cap for d in delays), n
        assert len(set(delays)) > 100  # jittered, not one value
        assert min(delays) < low + 0.1 * (ceiling - low)  # the whole range is used
        assert max(delays) > ceiling - 0.1 * (ceiling - low)


def test_the_policies_keep_the_delays_the_loops_always_drew() -> None:
    rng = random.Random(3)
    for n in range(12):
        # check-in: full jitter, at least 0.1 s, up to min(60, 2^n)
        assert all(0.1 <= CHECK_IN.delay(n, rng) <= min(60.0, 2.0**n) for _ in range(100))
        # a round's calls: 0.2 s doubling to 10 s, ±50 %
        nominal = min(10.0, 0.2 * 2**n)
        assert all(
            0.5 * nominal - 1e-12 <= ROUND.delay(n, rng) <= 1.5 * nominal + 1e-12
            for _ in range(100)
        )
        # downloads: 0.5 to 1.5 s, every time
        assert all(0.5 <= DOWNLOAD.delay(n, rng) <= 1.5 for _ in range(100))


def test_no_jitter_gives_the_ceiling_and_a_floor_holds() -> None:
    rng = random.Random(0)
    assert [RetryPolicy(base=1.0, cap=4.0, jitter=0.0).delay(n, rng) for n in range(4)] == [
        1,
        2,
        4,
        4,
    ]
    floored = RetryPolicy(base=1.0, cap=4.0, floor=0.5)
    assert all(floored.delay(0, rng) >= 0.5 for _ in range(200))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": 0.0, "cap": 1.0}, "base <= cap"),
        ({"base": 2.0, "cap": 1.0}, "base <= cap"),
        ({"base": 1.0, "cap": float("inf")}, "base <= cap"),
        ({"base": 1.0, "cap": 2.0, "jitter": 1.5}, "jitter"),
        ({"base": 1.0, "cap": 2.0, "multiplier": 0.5}, "multiplier"),
        ({"base": 1.0, "cap": 2.0, "floor": 3.0}, "floor"),
        ({"base": 1.0, "cap": 2.0, "max_attempts": 0}, "max_attempts"),
        ({"base": 1.0, "cap": 2.0, "max_elapsed": 0.0}, "max_elapsed"),
        ({"base": 1.0, "cap": 2.0, "retryable": frozenset({Code.OK})}, "OK"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_which_codes_each_policy_retries() -> None:
    assert {
        Code.UNAVAILABLE,
        Code.DEADLINE_EXCEEDED,
        Code.RESOURCE_EXHAUSTED,
        Code.CANCELLED,
    } == retry.TEMPORARY
    for policy in (ROUND, DOWNLOAD):
        assert all(policy.retries(c) for c in retry.TEMPORARY)
        assert not any(policy.retries(c) for c in PERMANENT)
    # the check-in loop survives everything but a refusal of the agent or its configuration
    assert not CHECK_IN.retries(Code.UNAUTHENTICATED)
    assert not CHECK_IN.retries(Code.PERMISSION_DENIED)
    assert not CHECK_IN.retries(Code.INVALID_ARGUMENT)  # another task
    assert not CHECK_IN.retries(Code.UNIMPLEMENTED)
    assert CHECK_IN.retries(Code.INTERNAL)
    permanent = retry.REFUSED | retry.MISCONFIGURED | {Code.OK}
    assert all(CHECK_IN.retries(c) for c in set(Code) - permanent)


# --- the helper ------------------------------------------------------------------------


def test_temporary_failures_are_retried_with_growing_capped_delays() -> None:
    fake = FakeTime()
    policy = RetryPolicy(base=0.25, cap=2.0, jitter=0.5)
    call = Flaky(*[Code.UNAVAILABLE] * 6, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED)
    result = _run(
        lambda: call_with_retry(
            call, policy, what="t", rng=random.Random(1), sleep=fake.sleep, clock=fake.clock
        )
    )
    assert result == "ok"
    assert call.calls == 9
    assert len(fake.slept) == 8
    for n, slept in enumerate(fake.slept):
        assert policy.ceiling(n) / 2 <= slept <= policy.ceiling(n) <= 2.0
    assert fake.slept[3] > fake.slept[0]  # it grows: [1, 2] against [0.125, 0.25]


@pytest.mark.parametrize("code", PERMANENT, ids=lambda c: c.name)
def test_a_permanent_failure_is_raised_at_once(code: grpc.StatusCode) -> None:
    fake = FakeTime()
    call = Flaky(code)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _run(lambda: call_with_retry(call, ROUND, what="t", sleep=fake.sleep, clock=fake.clock))
    assert caught.value.code() is code
    assert call.calls == 1
    assert fake.slept == []


def test_max_attempts_is_honoured_and_the_last_error_raised() -> None:
    fake = FakeTime()
    policy = RetryPolicy(base=1.0, cap=8.0, max_attempts=4)
    call = Flaky(*[Code.UNAVAILABLE] * 3, Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _run(lambda: call_with_retry(call, policy, what="t", sleep=fake.sleep, clock=fake.clock))
    assert caught.value.code() is Code.RESOURCE_EXHAUSTED
    assert call.calls == 4
    assert len(fake.slept) == 3


def test_no_wait_ends_past_the_deadline() -> None:
    fake = FakeTime()
    deadline = fake.now + 10.0
    call = Flaky(*[Code.UNAVAILABLE] * 100)
    with pytest.raises(grpc.aio.AioRpcError):
        _run(
            lambda: call_with_retry(
                call,
                RetryPolicy(base=1.0, cap=4.0, jitter=0.0),
                what="t",
                deadline=deadline,
                sleep=fake.sleep,
                clock=fake.clock,
            )
        )
    assert fake.slept == [1, 2, 4]  # the next 4 s would end at 11 s
    assert fake.now <= deadline
    assert call.calls == 4


def test_max_elapsed_is_honoured() -> None:
    fake = FakeTime()
    call = Flaky(*[Code.UNAVAILABLE] * 100)
    policy = RetryPolicy(base=1.0, cap=1.0, jitter=0.0, max_elapsed=5.5)
    with pytest.raises(grpc.aio.AioRpcError):
        _run(lambda: call_with_retry(call, policy, what="t", sleep=fake.sleep, clock=fake.clock))
    assert fake.slept == [1.0] * 5
    assert call.calls == 6


def test_reset_starts_the_backoff_again() -> None:
    fake = FakeTime()
    retrier = Retrier(
        RetryPolicy(base=1.0, cap=16.0, jitter=0.0, max_attempts=3),
        what="t",
        sleep=fake.sleep,
        clock=fake.clock,
    )

    async def fail_twice_then_progress() -> None:
        for _ in range(3):
            for _ in range(2):
                await retrier.pause(_error(Code.UNAVAILABLE))
            retrier.reset()

    _run(fail_twice_then_progress)
    # attempts are counted since the last progress, and the delays restart from base
    assert fake.slept == [1, 2] * 3


def test_each_retry_is_logged_with_code_and_details(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    retrier = Retrier(
        ROUND, what="Unmask", sleep=fake.sleep, clock=fake.clock, level=logging.WARNING
    )
    with caplog.at_level(logging.INFO, logger="edge_client.retry"):
        _run(lambda: retrier.pause(_error(Code.UNAVAILABLE, "failed to connect")))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        "Unmask: coordinator unreachable (UNAVAILABLE: failed to connect); retrying in "
    )


def test_an_unavailable_the_coordinator_sent_is_not_called_unreachable() -> None:
    marked = grpc.aio.Metadata((REFUSAL_TRAILER, "storage_unavailable"))
    answered = grpc.aio.AioRpcError(
        Code.UNAVAILABLE, grpc.aio.Metadata(), marked, details="cannot store data now"
    )
    assert describe(answered) == "answered: not now"
    assert describe(_error(Code.UNAVAILABLE, "failed to connect")) == "unreachable"
    assert describe(_error(Code.DEADLINE_EXCEEDED)) == "too slow"


def test_agent_channels_reconnect_within_seconds() -> None:
    options = dict(AGENT_CHANNEL_OPTIONS)
    # gRPC's default grows to 120 s, past the coordinator's restart grace
    assert options["grpc.max_reconnect_backoff_ms"] <= 5_000
    assert options["grpc.max_receive_message_length"] == 16 << 20


# --- the session and the agent use it --------------------------------------------------


def _session(tmp_path: Path, fake: FakeTime, **kwargs: Any) -> RoundSession:
    def compute(inputs: RoundInputs) -> dict[str, np.ndarray]:
        raise AssertionError("not called")

    return RoundSession(
        stub=object(),  # type: ignore[arg-type]
        identity_key=Ed25519PrivateKey.generate(),
        assignment=pb.RoundAssignment(round_id="r1"),
        compute=compute,
        cache_dir=tmp_path,
        rng=random.Random(5),
        sleep=fake.sleep,
        **kwargs,
    )


def test_a_rounds_calls_retry_temporary_codes_through_the_sessions_sleep(tmp_path: Path) -> None:
    fake = FakeTime()
    session = _session(tmp_path, fake)
    call = Flaky(Code.UNAVAILABLE, Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED)
    assert _run(lambda: session._call("Unmask", call)) == "ok"
    assert call.calls == 4
    assert [round(ROUND.ceiling(n), 6) for n in range(3)] == [0.3, 0.6, 1.2]
    assert all(ROUND.ceiling(n) / 3 <= s <= ROUND.ceiling(n) for n, s in enumerate(fake.slept))

    refused = Flaky(Code.FAILED_PRECONDITION)
    with pytest.raises(grpc.aio.AioRpcError):
        _run(lambda: session._call("Unmask", refused))
    assert refused.calls == 1
    assert len(fake.slept) == 3


def test_a_call_the_transport_cancelled_is_sent_again(tmp_path: Path) -> None:
    """bench_secure_cohort at 1,000 agents: AdvertiseKeys ended CANCELLED without reaching
    the coordinator, and the agents left the round; now the call goes again."""
    fake = FakeTime()
    session = _session(tmp_path, fake)
    call = Flaky(Code.CANCELLED, Code.CANCELLED)
    assert _run(lambda: session._send_phase("AdvertiseKeys", call)) is None
    assert call.calls == 3
    assert len(fake.slept) == 2


def test_a_rounds_calls_stop_at_its_deadline(tmp_path: Path) -> None:
    fake = FakeTime()
    session = _session(tmp_path, fake)
    session.deadline = 0.0  # long past (the session's clock is the real monotonic one)
    call = Flaky(Code.UNAVAILABLE)
    with pytest.raises(grpc.aio.AioRpcError):
        _run(lambda: session._call("Unmask", call))
    assert call.calls == 1
    assert fake.slept == []


class _RefusingState:
    def __init__(self, code: ErrorCode) -> None:
        self.code = code

    def handle(self, message: object) -> None:
        raise SecAggError(self.code, "test")


def _keys_event() -> pb.RoundEvent:
    return pb.RoundEvent(round_id="r1", phase=pb.PHASE_SHARE_KEYS, keys=pb.KeysBroadcast())


async def _on_event(session: RoundSession) -> object:
    downloads: asyncio.Future[RoundInputs] = asyncio.get_running_loop().create_future()
    config = pb.RoundConfig(secure_aggregation=True)
    layout = cast(SegmentLayout, None)  # not reached: the state refuses the message first
    return await session._on_event(_keys_event(), config, layout, downloads)


def test_a_repeated_phase_message_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session = _session(tmp_path, FakeTime())
    session.state = _RefusingState(ErrorCode.UNEXPECTED_MESSAGE)  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="edge_client.session"):
        assert asyncio.run(_on_event(session)) is None
    assert any("ignoring a message for phase" in r.getMessage() for r in caplog.records)


def test_any_other_secure_aggregation_error_ends_the_round(tmp_path: Path) -> None:
    session = _session(tmp_path, FakeTime())
    session.state = _RefusingState(ErrorCode.INVALID_MESSAGE)  # type: ignore[assignment]
    with pytest.raises(SessionError) as caught:
        asyncio.run(_on_event(session))
    assert caught.value.outcome is Outcome.REFUSED
    assert "invalid_message" in caught.value.reason


class _LeavingSession:
    round_id = "r1"

    def __init__(self) -> None:
        self.left: list[str] = []

    async def leave(self, reason: str) -> None:
        self.left.append(reason)


def _abandon(body: Callable[[], Awaitable[Any]]) -> tuple[object, _LeavingSession]:
    session = _LeavingSession()

    async def main() -> object:
        task = asyncio.ensure_future(body())
        await asyncio.sleep(0)
        return await Agent._abandon(None, session, task)  # type: ignore[arg-type]

    return asyncio.run(main()), session


def test_abandoning_a_round_that_does_not_finish_cancels_it_and_leaves() -> None:
    result, session = _abandon(lambda: asyncio.sleep(60))
    assert getattr(result, "outcome", None) is Outcome.REFUSED
    assert session.left == ["cancelled"]


def test_abandoning_a_round_lets_an_unexpected_error_through() -> None:
    async def breaks_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise OSError("disk full") from None

    with pytest.raises(OSError, match="disk full"):
        _abandon(breaks_when_cancelled)


def test_the_agents_own_cancellation_is_never_a_cancelled_status() -> None:
    """Retrying CANCELLED is safe only because a call the agent cancels itself (a task
    cancelled: a stop, a session's end) raises CancelledError, not AioRpcError(CANCELLED).
    A real gRPC server on loopback holds one call open, and the task awaiting it is
    cancelled."""
    entered = asyncio.Event()

    async def hang(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        entered.set()
        await asyncio.sleep(60)
        return b""

    async def scenario() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Hang", {"Call": grpc.unary_unary_rpc_method_handler(hang)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/test.Hang/Call")
                task = asyncio.ensure_future(call(b""))
                await asyncio.wait_for(entered.wait(), timeout=10)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            await server.stop(None)

    asyncio.run(scenario())

"""Property-based fuzzing of every RPC of a real coordinator while an honest round runs.

One coordinator process (mutual TLS, SQLite) trains with three honest in-process agents in a
background thread, round after round. Meanwhile hypothesis drives every method of
``EdgeService`` from a fourth enrolled client that is in no cohort, and ``Enroll`` on the
enrollment port from no client at all, with:

- random bytes as the request (unparseable, truncated, or parsing by accident);
- messages built from the method's own descriptor with random field values: huge or
  negative numbers, unknown enum values, long strings, huge repeated fields, and the live
  round's id and phase next to random ones (a valid message for the wrong client);
- the bytes of such a message cut short or with bytes flipped;
- request streams (``UploadMaskedInput``) of random chunks in any order, and streams the
  client abandons part way; response streams read in part and dropped.

Every answer must be a proper status (never ``INTERNAL`` nor ``UNKNOWN``), the coordinator
must stay alive and healthy, and the honest agents must keep committing rounds throughout.
``FEDADAMW_FUZZ_EXAMPLES`` sets the examples per method (default 40 in ``make test``);
the last test prints the counts by method and status code.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_client.enrollment import Credentials, enroll
from tests.e2e.clients import KnownUpdate
from tests.e2e.harness import FAST, Coordinator, TestAgent, merged
from wire.v1 import edge_pb2 as pb

EXAMPLES = int(os.environ.get("FEDADAMW_FUZZ_EXAMPLES", "40"))
SERVICE = pb.DESCRIPTOR.services_by_name["EdgeService"]
HONEST = 3
CONFIG = merged(
    FAST,
    rounds=1000,
    cohort=HONEST + 1,  # the fuzzer checks in too: selected, it never answers, and is dropped
    min_clients=HONEST,
    local_steps=1,
    limits={"chunk_elements": 4096, "checkin_wait": 2, "rate_per_second": 1000},
)
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
TALLY: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
"""Answers by method and status code, over the module (printed by the last test)."""


@dataclass
class Honest:
    """Three agents running rounds in a thread of their own until ``stop``."""

    coordinator: Coordinator
    credentials: list[Credentials]
    root: Path
    stop: threading.Event = field(default_factory=threading.Event)
    committed: list[int] = field(default_factory=list)  # model versions
    errors: list[BaseException] = field(default_factory=list)
    live: dict[str, Any] = field(default_factory=dict)  # the round id and phase now

    def run(self) -> None:
        try:
            asyncio.run(self._rounds())
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.errors.append(exc)

    async def _rounds(self) -> None:
        agents = [TestAgent(self.coordinator, c, self.root) for c in self.credentials]
        try:
            await asyncio.gather(*(self._agent(agent) for agent in agents))
        finally:
            for agent in agents:
                await agent.close()

    async def _agent(self, agent: TestAgent) -> None:
        while not self.stop.is_set():
            assignment = await agent.assignment(timeout=300)
            self.live["round_id"] = assignment.round_id
            result = await agent.session(assignment, KnownUpdate()).run()
            if result.model_version:
                self.committed.append(result.model_version)


@dataclass
class Target:
    coordinator: Coordinator
    fuzzer: Credentials
    honest: Honest
    channel: grpc.Channel
    enroll_channel: grpc.Channel


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    coordinator = Coordinator(root, CONFIG)
    coordinator.start()
    tokens = coordinator.tokens(HONEST + 1)

    async def enroll_all() -> list[Credentials]:
        return [
            await enroll(
                address=coordinator.enroll_address,
                ca_certificate_pem=coordinator.ca_pem,
                token=token,
                label=f"fuzz-{i}",
            )
            for i, token in enumerate(tokens)
        ]

    *honest_credentials, fuzzer = asyncio.run(enroll_all())
    honest = Honest(coordinator, honest_credentials, root)
    thread = threading.Thread(target=honest.run, daemon=True)
    thread.start()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=coordinator.ca_pem,
        private_key=fuzzer.tls_key_pem,
        certificate_chain=fuzzer.certificate_pem,
    )
    channel = grpc.secure_channel(coordinator.address, credentials)
    enroll_channel = grpc.secure_channel(
        coordinator.enroll_address,
        grpc.ssl_channel_credentials(root_certificates=coordinator.ca_pem),
    )
    try:
        yield Target(coordinator, fuzzer, honest, channel, enroll_channel)
    finally:
        honest.stop.set()
        thread.join(timeout=120)
        channel.close()
        enroll_channel.close()
        coordinator.stop()


# --- messages from descriptors -------------------------------------------------------------

_INTS = st.one_of(
    st.integers(-3, 300),
    st.sampled_from([-(2**31), 2**31 - 1, -(2**63), 2**63 - 1, 2**32, 10**12]),
)
_UINTS = st.one_of(st.integers(0, 300), st.sampled_from([2**32 - 1, 2**64 - 1, 10**12]))
_BYTES = st.one_of(
    st.binary(max_size=96),
    st.sampled_from([b"", bytes(32), bytes(64), b"\xff" * 33]),
    st.integers(0, 1 << 17).map(lambda n: b"\x01" * n),  # up to 128 KiB
)
_TEXT = st.one_of(st.text(max_size=80), st.integers(0, 5000).map(lambda n: "r" * n))


def _scalar(fd: FieldDescriptor, live: dict[str, Any]) -> st.SearchStrategy[Any]:
    t = fd.type
    if fd.name == "round_id":
        return st.one_of(_TEXT, st.just(live.get("round_id", "")), st.just("0" * 32))
    if t == FieldDescriptor.TYPE_ENUM:
        return st.one_of(
            st.sampled_from([v.number for v in fd.enum_type.values]), st.integers(-5, 99)
        )
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_STRING,):
        return _TEXT
    if t == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _UINTS.map(lambda v: v % 2**32)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _UINTS.map(lambda v: v % 2**64)
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return _INTS.map(lambda v: max(-(2**31), min(2**31 - 1, v)))
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return _INTS.map(lambda v: max(-(2**63), min(2**63 - 1, v)))
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    raise AssertionError(f"no strategy for {fd.full_name}")


@st.composite
def messages(
    draw: st.DrawFn, descriptor: Descriptor, live: dict[str, Any], depth: int = 0
) -> Message:
    """A message of ``descriptor`` with random values in a random subset of its fields."""
    message = pb_class(descriptor)()
    for fd in descriptor.fields:
        if not draw(st.booleans()):
            continue
        repeated = fd.is_repeated
        count = draw(st.one_of(st.integers(0, 4), st.just(2000))) if repeated else 1
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2:
                continue
            values = [
                draw(messages(fd.message_type, live, depth + 1)) for _ in range(min(count, 8))
            ]
            if repeated:
                if count > 8 and values:
                    values = values * (count // len(values))
                getattr(message, fd.name).extend(values)
            elif values:
                getattr(message, fd.name).CopyFrom(values[0])
        else:
            value_strategy = _scalar(fd, live)
            if repeated:
                values = [draw(value_strategy) for _ in range(min(count, 8))]
                if count > 8 and values:
                    values = values * (count // len(values))
                getattr(message, fd.name).extend(values)
            else:
                setattr(message, fd.name, draw(value_strategy))
    return message


def pb_class(descriptor: Descriptor) -> type[Message]:
    return getattr(pb, descriptor.name)  # type: ignore[no-any-return]


@st.composite
def request_bytes(draw: st.DrawFn, descriptor: Descriptor, live: dict[str, Any]) -> bytes:
    """Bytes to send as a request: random, a random message, or one cut short or flipped."""
    kind = draw(st.sampled_from(["random", "message", "truncated", "flipped"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    data = draw(messages(descriptor, live)).SerializeToString()
    if kind == "truncated" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flipped" and data:
        buffer = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buffer[draw(st.integers(0, len(buffer) - 1))] ^= draw(st.integers(1, 255))
        return bytes(buffer)
    return data


# --- calls ------------------------------------------------------------------------------------


def _path(name: str) -> str:
    return f"/{SERVICE.full_name}/{name}"


def _record(method: str, code: grpc.StatusCode, details: str | None) -> None:
    TALLY[method][code.name] += 1
    assert code not in NEVER, f"{method} answered {code.name}: {details}"


def _call(target: Target, name: str, payload: bytes) -> None:
    method = SERVICE.methods_by_name[name]
    channel = target.enroll_channel if name == "Enroll" else target.channel
    try:
        if method.server_streaming:
            stream = channel.unary_stream(_path(name))(payload, timeout=5)
            for _ in zip(range(3), stream, strict=False):
                pass
            stream.cancel()
            code, details = grpc.StatusCode.OK, None
        else:
            channel.unary_unary(_path(name))(payload, timeout=10)
            code, details = grpc.StatusCode.OK, None
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    if code is grpc.StatusCode.CANCELLED and method.server_streaming:
        code = grpc.StatusCode.OK  # our own cancel of a stream read in part
    _record(name, code, details)


UNARY = [m.name for m in SERVICE.methods if not m.client_streaming]
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.mark.parametrize("name", UNARY)
def test_every_rpc_answers_random_and_mutated_requests_with_a_proper_status(
    target: Target, name: str
) -> None:
    descriptor = SERVICE.methods_by_name[name].input_type

    @SETTINGS
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        _call(target, name, data.draw(request_bytes(descriptor, target.honest.live)))

    fuzz()
    assert target.coordinator.process is not None
    assert target.coordinator.process.poll() is None, target.coordinator.log()[-3000:]


class _AbandonedError(Exception):
    pass


def test_upload_streams_out_of_order_truncated_and_abandoned(target: Target) -> None:
    descriptor = pb.MaskedInputChunk.DESCRIPTOR
    call = target.channel.stream_unary(_path("UploadMaskedInput"))

    @SETTINGS
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        items = data.draw(st.lists(request_bytes(descriptor, target.honest.live), max_size=12))
        abandon_at = data.draw(st.one_of(st.none(), st.integers(0, max(0, len(items)))))

        def stream() -> Iterator[bytes]:
            for i, item in enumerate(items):
                if abandon_at is not None and i == abandon_at:
                    raise _AbandonedError  # the client's stream breaks part way
                yield item

        try:
            call(stream(), timeout=10)
            code, details = grpc.StatusCode.OK, None
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        if (
            abandon_at is not None
            and code is grpc.StatusCode.UNKNOWN
            and "iterating requests" in (details or "")
        ):
            code = grpc.StatusCode.CANCELLED  # gRPC's own name for the client's broken stream
        _record("UploadMaskedInput", code, details)

    fuzz()


def test_the_honest_rounds_kept_committing(target: Target) -> None:
    """Runs last in the module: the rounds beside the fuzzing committed and still do."""
    before = max(target.honest.committed, default=0)
    deadline = time.monotonic() + 120

    def waiting() -> bool:
        # one more round after the fuzzing, and at least two in all (the first round may
        # still be open now: the fuzzer, once selected into it, is dropped at a deadline)
        latest = max(target.honest.committed, default=0)
        return latest <= before or latest < 2

    while waiting() and time.monotonic() < deadline:
        assert not target.honest.errors, target.honest.errors
        time.sleep(0.5)
    assert not target.honest.errors, target.honest.errors
    assert max(target.honest.committed, default=0) > before, target.coordinator.log()[-4000:]
    assert max(target.honest.committed) >= 2
    log = target.coordinator.log()
    assert "Traceback" not in log, log[-4000:]
    tried = sum(sum(c.values()) for c in TALLY.values())
    assert tried >= EXAMPLES * (len(UNARY) + 1) // 2
    codes = sorted({code for counts in TALLY.values() for code in counts})
    rounds = len(set(target.honest.committed))
    print(f"\nfuzzed {tried} requests; committed rounds meanwhile: {rounds}")
    print("| method | " + " | ".join(codes) + " |")
    print("|---|" + "---|" * len(codes))
    for method in sorted(TALLY):
        print(f"| {method} | " + " | ".join(str(TALLY[method][c]) for c in codes) + " |")

"""Mutation fuzzing from inside the cohort: a member that sends its own valid messages, changed.

``test_fuzz.py`` fuzzes every RPC from a client that is in no round. This module fuzzes from
a member of the live round, which passes the checks an outsider fails (it is selected, its
round id and phase are right) and reaches the code behind them. One coordinator process
(mutual TLS, SQLite) runs round after round with four in-process agents: three honest ones
and a mutant. The mutant runs the real agent's round session, but in each round one request
of one method (chosen at random) goes out with one change: a field of the real message, at
any depth, gets a neighbouring, extreme or random value; a bytes field is flipped,
truncated, extended or emptied; a repeated field loses, repeats, swaps or multiplies its
elements; a nested message is cleared. In uploads, one chunk of the stream is changed so,
or sent twice. After that one request the mutant goes on honestly.

What must hold (docs/architecture.md, sections 3 and 6):

- every answer to a changed request is a proper status, never ``INTERNAL`` or ``UNKNOWN``,
  and so is every answer the coordinator gave in the run (its request metric);
- every round ends, committed or aborted, within its deadlines: nothing hangs;
- a round whose changed request was refused commits with the honest three, or with all
  four where the mutant's retry went through, to the exact mean of what the survivors sent;
- a changed message that the coordinator cannot check (a share's ciphertext, masked
  values) ends as secure aggregation says: an honest recipient that cannot decrypt a share
  refuses the round, and the round aborts cleanly; masked values that were changed are
  summed, as any input is (secure aggregation hides inputs; it does not vouch for them);
- after the fuzzing, a round of all four honest agents commits, the coordinator is alive and
  its log holds no traceback.

``FEDADAMW_FUZZ_MEMBER_ROUNDS`` sets the rounds (default 8 in ``make test``) and
``FEDADAMW_FUZZ_SEED`` the seed; the test prints each mutation and what came of it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from coordinator.blobs import BlobStore
from edge_client.retry import stream_ended_early
from edge_client.session import Outcome, RoundResult
from secure_agg import shamir
from tests.e2e.harness import FAST, Coordinator, TestAgent, merged
from tests.e2e.test_dropouts import Known
from tests.faults.test_crash import _store
from wire.v1 import edge_pb2 as pb

ROUNDS = int(os.environ.get("FEDADAMW_FUZZ_MEMBER_ROUNDS", "8"))
SEED = int(os.environ.get("FEDADAMW_FUZZ_SEED", str(random.SystemRandom().randrange(2**32))))
MUTATED = (
    "GetRoundConfig",
    "AdvertiseKeys",
    "ShareKeys",
    "GetUploadStatus",
    "UploadMaskedInput",
    "SubmitConsistencySignature",
    "Unmask",
)
NEVER = {"INTERNAL", "UNKNOWN"}
MID_STREAM = "refused mid-stream"
CONFIG = merged(
    FAST,
    rounds=ROUNDS + 2,
    cohort=4,
    min_clients=3,
    local_steps=1,
    retention={"keep_versions": ROUNDS + 3},  # every version is checked at the end
    deadlines={
        "advertise_keys": 8,
        "share_keys": 8,
        "masked_input": 10,
        "consistency_check": 8,
        "unmasking": 8,
        "restart_grace": 30,
    },
)


# --- the mutations ---------------------------------------------------------------------------

_EXTREME_INTS = (0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)


def _int_range(fd: FieldDescriptor) -> tuple[int, int]:
    unsigned = fd.type in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    )
    wide = fd.type in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    )
    bits = 64 if wide else 32
    return (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _new_scalar(fd: FieldDescriptor, old: Any, rng: random.Random) -> tuple[Any, str]:
    """A changed value for a scalar field, and a word on how it changed."""
    t = fd.type
    if t == FieldDescriptor.TYPE_BYTES:
        data = bytearray(old)
        how = rng.choice(["flip", "truncate", "extend", "empty", "random"] if data else ["extend"])
        if how == "flip":
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == "truncate":
            del data[rng.randrange(len(data)) :]
        elif how == "extend":
            data += rng.randbytes(rng.choice([1, 16, 4096]))
        elif how == "empty":
            data = bytearray()
        else:
            data = bytearray(rng.randbytes(len(data)))
        return bytes(data), f"bytes {how} ({len(old)} -> {len(data)})"
    if t == FieldDescriptor.TYPE_STRING:
        value = rng.choice(["", "0" * 32, old[::-1], old + "x", "\u00e9" * 3])
        return value, f"string {old[:12]!r} -> {value[:12]!r}"
    if t == FieldDescriptor.TYPE_BOOL:
        return not old, f"bool -> {not old}"
    if t == FieldDescriptor.TYPE_ENUM:
        value = rng.choice([*(v.number for v in fd.enum_type.values), 17, -1])
        return value, f"enum {old} -> {value}"
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        value = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30, -old])
        return value, f"float {old} -> {value}"
    low, high = _int_range(fd)
    value = rng.choice(
        [old + 1, old - 1, -old, old * 2 + 1, rng.randint(low, high), *_EXTREME_INTS]
    )
    value = max(low, min(high, value))
    return value, f"int {old} -> {value}"


@dataclass(frozen=True)
class _Slot:
    owner: Message
    field: FieldDescriptor
    index: int | None  # an element of a repeated field, or the field as a whole

    @property
    def name(self) -> str:
        return self.field.name + ("" if self.index is None else f"[{self.index}]")


def _slots(message: Message, prefix: str = "") -> Iterator[tuple[str, _Slot]]:
    for fd, value in message.ListFields():
        path = f"{prefix}{fd.name}"
        if fd.is_repeated:
            yield path, _Slot(message, fd, None)
            for i, element in enumerate(value):
                yield f"{path}[{i}]", _Slot(message, fd, i)
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    yield from _slots(element, f"{path}[{i}].")
        else:
            yield path, _Slot(message, fd, None)
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _slots(value, f"{path}.")


def _mutate_repeated(slot: _Slot, rng: random.Random) -> str:
    values = getattr(slot.owner, slot.field.name)
    items = list(values)
    how = rng.choice(["drop", "repeat", "swap", "multiply", "clear"])
    if how == "drop" and items:
        del items[rng.randrange(len(items))]
    elif how == "repeat" and items:
        items.insert(rng.randrange(len(items) + 1), rng.choice(items))
    elif how == "swap" and len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        items[i], items[j] = items[j], items[i]
    elif how == "multiply" and items:
        items = items * 200
    else:
        how, items = "clear", []
    copies = []
    for item in items:
        if isinstance(item, Message):
            copy = type(item)()
            copy.CopyFrom(item)
            copies.append(copy)
        else:
            copies.append(item)
    del values[:]
    values.extend(copies)
    return f"repeated {how} ({len(list(copies))} left)"


def mutate(message: Message, rng: random.Random) -> tuple[Message, str]:
    """A copy of ``message`` with one change at a random place; the copy and what changed."""
    copy = type(message)()
    copy.CopyFrom(message)
    slots = list(_slots(copy))
    if not slots:
        return copy, "no field set; sent as it was"
    path, slot = rng.choice(slots)
    fd = slot.field
    if fd.is_repeated and slot.index is None:
        return copy, f"{path}: {_mutate_repeated(slot, rng)}"
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        target = getattr(slot.owner, fd.name)
        if slot.index is None:
            slot.owner.ClearField(fd.name)
        else:
            target[slot.index].Clear()
        return copy, f"{path}: cleared"
    if slot.index is None:
        value, how = _new_scalar(fd, getattr(slot.owner, fd.name), rng)
        setattr(slot.owner, fd.name, value)
    else:
        values = getattr(slot.owner, fd.name)
        value, how = _new_scalar(fd, values[slot.index], rng)
        values[slot.index] = value
    return copy, f"{path}: {how}"


# --- the mutant ------------------------------------------------------------------------------


@dataclass
class Mutation:
    round: int
    method: str
    change: str = ""
    answer: str = "not sent"  # the status code the changed request got


class MutatingStub:
    """Forwards to ``stub``; the first request of ``method`` goes out changed, once."""

    def __init__(self, stub: Any, mutation: Mutation, rng: random.Random) -> None:
        self._stub = stub
        self.mutation = mutation
        self._rng = rng
        self._armed = True

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._stub, name)
        if name != self.mutation.method:
            return real
        if name == "UploadMaskedInput":
            return self._upload(real)
        return self._unary(real)

    def _unary(self, real: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Message, **kwargs: Any) -> Any:
            if not self._armed:
                return await real(request, **kwargs)
            self._armed = False
            changed, self.mutation.change = mutate(request, self._rng)
            return await self._answered(real(changed, **kwargs))

        return call

    def _upload(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(chunks: AsyncIterator[Message], **kwargs: Any) -> Any:
            if not self._armed:
                return real(chunks, **kwargs)
            self._armed = False
            return self._answered(real(self._changed_stream(chunks), **kwargs))

        return call

    async def _changed_stream(self, chunks: AsyncIterator[Message]) -> AsyncIterator[Message]:
        first = True
        async for chunk in chunks:
            if first:
                first = False
                if self._rng.random() < 0.2:
                    self.mutation.change = f"chunk {chunk.chunk_index} sent twice"  # type: ignore[attr-defined]
                    yield chunk
                    yield chunk
                    continue
                changed, change = mutate(chunk, self._rng)
                self.mutation.change = f"first chunk of the stream: {change}"
                yield changed
                continue
            yield chunk

    async def _answered(self, pending: Any) -> Any:
        try:
            answer = await pending
        except grpc.aio.AioRpcError as exc:
            # A stream the coordinator refused while chunks were still going out reaches
            # grpc.aio as INTERNAL from Core, the coordinator's status lost on the way
            # (edge_client.retry.stream_ended_early); what the coordinator itself answered
            # is in its request metric, checked apart.
            self.mutation.answer = MID_STREAM if stream_ended_early(exc) else exc.code().name
            raise
        self.mutation.answer = "OK"
        return answer


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Round:
    mutation: Mutation
    honest: list[RoundResult]
    mutant: RoundResult | BaseException
    sent: list[Known]  # what each agent sent, mutant last
    seconds: float


def _requests_by_code(coordinator: Coordinator) -> dict[str, float]:
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = collections.Counter()
    for line in text.splitlines():
        if line.startswith("fedadamw_grpc_requests_total{"):
            key, value = line.rsplit(" ", 1)
            code = key.split('code="')[1].split('"')[0]
            out[code] += float(value)
    return out


def test_a_member_sending_changed_messages_gets_proper_statuses_and_rounds_go_on(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    coordinator = Coordinator(tmp_path, CONFIG)
    coordinator.start()
    try:

        async def scenario() -> tuple[list[Round], list[RoundResult]]:
            agents = await TestAgent.many(coordinator, tmp_path, 4)
            mutant = agents[-1]
            played: list[Round] = []
            try:
                for r in range(ROUNDS):
                    mutation = Mutation(r, rng.choice(MUTATED))
                    sent = [Known(1000 * r + i) for i in range(4)]
                    assignments = await asyncio.gather(*(a.assignment() for a in agents))
                    sessions = [
                        a.session(assignment, update)
                        for a, assignment, update in zip(agents, assignments, sent, strict=True)
                    ]
                    sessions[-1].stub = MutatingStub(mutant.stub, mutation, rng)  # type: ignore[assignment]
                    started = time.monotonic()
                    results = await asyncio.wait_for(
                        asyncio.gather(*(s.run() for s in sessions), return_exceptions=True),
                        timeout=120,
                    )
                    for result in results[:3]:
                        assert isinstance(result, RoundResult), (mutation, result)
                    played.append(
                        Round(
                            mutation,
                            list(results[:3]),  # type: ignore[arg-type]
                            results[3],
                            sent,
                            time.monotonic() - started,
                        )
                    )
                final = await asyncio.gather(
                    *(a.run_round(Known(99_000 + i)) for i, a in enumerate(agents))
                )
            finally:
                for a in agents:
                    await a.close()
            return played, list(final)

        played, final = asyncio.run(scenario())
        by_code = _requests_by_code(coordinator)
        log = coordinator.log()
        assert coordinator.process is not None
        assert coordinator.process.poll() is None, log[-3000:]
    finally:
        coordinator.stop()

    print(f"\nseed {SEED}: {len(played)} rounds, one changed request each")
    for p in played:
        honest = ",".join(r.outcome.value for r in p.honest)
        mutant = p.mutant.outcome.value if isinstance(p.mutant, RoundResult) else repr(p.mutant)
        print(
            f"round {p.mutation.round:2d} {p.mutation.method:27s} {p.mutation.answer:20s} "
            f"honest {honest:29s} mutant {mutant:9s} {p.seconds:5.1f}s  {p.mutation.change}"
        )
    print("answers by code over the run:", dict(by_code))

    assert [r.outcome for r in final] == [Outcome.COMMITTED] * 4, final
    assert "Traceback" not in log, log[-4000:]
    assert not NEVER & {code for code, n in by_code.items() if n}, by_code
    for p in played:
        assert p.mutation.answer not in NEVER, p.mutation
        outcomes = {r.outcome for r in p.honest}
        # the honest agents agree on how the round ended
        assert len(outcomes - {Outcome.REFUSED}) <= 1, p
        if p.mutation.answer not in ("OK", "not sent"):  # refused, so it changed nothing
            assert outcomes == {Outcome.COMMITTED}, p

    store = _store(coordinator)
    blobs = BlobStore(coordinator.data_dir / "blobs")
    try:
        made = {v.round_id: v.version for v in store.list_versions() if v.round_id}
        rounds = store.list_rounds()
        models = {
            v.version: blobs.read_array(v.model_sha256, "<f4").astype(np.float64)
            for v in store.list_versions()
        }
    finally:
        store.close()
    assert sorted(models) == list(range(len(models)))  # versions only forward
    checked = 0
    for p in played:
        ids = {r.round_id for r in p.honest}
        (round_id,) = ids
        (round_,) = [r for r in rounds if r.round_id == round_id]
        if round_.outcome.value != "committed" or p.mutation.answer == "OK":
            continue  # a change the coordinator accepted may be in the sum, as any input is
        # a refused change leaves the mutant's real input, sent or not: the survivors of
        # the masked-input phase are the honest three, or all four
        assert round_.survivors in (3, 4), (p, round_)
        included = p.sent[: round_.survivors]
        version = made[round_id]
        expected = models[version - 1] + np.mean([k.sent["delta"] for k in included], axis=0)
        np.testing.assert_allclose(models[version], expected, atol=2e-6, err_msg=str(p.mutation))
        checked += 1
    print(f"{checked} committed rounds checked against the exact mean of their survivors")


class ForgingStub:
    """Forwards to ``stub``; the ``Unmask`` request goes out with its first revealed share
    of a neighbour's self-mask secret changed to another valid field element."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.forged = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    async def Unmask(self, request: pb.UnmaskRequest, **kwargs: Any) -> Any:  # noqa: N802 (the RPC's name)
        changed = pb.UnmaskRequest()
        changed.CopyFrom(request)
        if changed.self_mask_shares:
            first = changed.self_mask_shares[0]
            first.share = shamir.encode_share((shamir.decode_share(first.share) + 1) % shamir.PRIME)
            self.forged += 1
        return await self._stub.Unmask(changed, **kwargs)


def test_a_member_that_forges_a_revealed_share_is_outvoted_and_the_round_commits(
    tmp_path: Path,
) -> None:
    """Found by the fuzzing above: a member that forged one revealed share aborted the
    round, although the coordinator had already rebuilt the right secret from the honest
    shares (it meets its owner's commitment). Now, where the honest shares outvote it, the
    round commits the exact mean of every input, and the forger is named in the log, the
    metric and the audit log."""
    # Six in a complete graph, t = 3: each secret has 5 shares revealed, and the 4 honest
    # ones hold at least (5 + 3) / 2 of them, so the forged one is outvoted. (In a cohort of
    # four, 2 of 3 is too few to outvote, and the round aborts.)
    coordinator = Coordinator(tmp_path, merged(CONFIG, rounds=1, cohort=6, min_clients=5))
    coordinator.start()
    try:

        async def scenario() -> tuple[list[Known], list[RoundResult], ForgingStub, int]:
            agents = await TestAgent.many(coordinator, tmp_path, 6)
            sent = [Known(i) for i in range(6)]
            forging = ForgingStub(agents[-1].stub)
            try:
                assignments = await asyncio.gather(*(a.assignment() for a in agents))
                sessions = [
                    a.session(assignment, update)
                    for a, assignment, update in zip(agents, assignments, sent, strict=True)
                ]
                sessions[-1].stub = forging  # type: ignore[assignment]
                results = await asyncio.gather(*(s.run() for s in sessions))
            finally:
                for a in agents:
                    await a.close()
            return sent, list(results), forging, agents[-1].credentials.client_id

        sent, results, forging, forger = asyncio.run(scenario())
        log = coordinator.log()
        metrics = (
            urllib.request.urlopen(
                f"http://127.0.0.1:{coordinator.metrics_port}/metrics", timeout=10
            )
            .read()
            .decode()
        )
    finally:
        coordinator.stop()
    assert forging.forged == 1
    assert [r.outcome for r in results] == [Outcome.COMMITTED] * 6, results
    assert f"clients [{forger}] revealed shares that the others outvote" in log, log[-3000:]
    assert 'fedadamw_forged_shares_clients_total{outcome="outvoted"} 1.0' in metrics
    store = _store(coordinator)
    blobs = BlobStore(coordinator.data_dir / "blobs")
    try:
        x0, x1 = (
            blobs.read_array(v.model_sha256, "<f4").astype(np.float64)
            for v in store.list_versions()
        )
        audit = [e for e in store.list_audit() if e.action == "forged_shares"]
    finally:
        store.close()
    np.testing.assert_allclose(x1, x0 + np.mean([k.sent["delta"] for k in sent], axis=0), atol=2e-6)
    assert len(audit) == 1
    assert f"clients {forger} (outvoted" in audit[0].detail

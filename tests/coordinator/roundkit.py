"""Shared helpers for the round-layer tests (``test_round_state.py``, ``test_driver.py``).

Everything runs in process, on the real parts where they matter:

- time: ``Clock`` (a settable UTC datetime) and ``FakeSleep`` (records the delays the driver
  asks for and returns at once);
- faults on demand: ``FailingStore`` wraps a real store and raises from chosen methods for
  their next calls; ``FailingBlobStore`` and ``FailingSpool`` do the same for blob and spool
  writes, with the ``BlobError`` a full disk gives;
- SQLite: ``migrated_template`` migrates one database file per run, ``open_sqlite`` copies
  it for a test;
- messages: ``parse_for`` turns a ``secure_agg`` client message into the service's
  ``Parse`` (message and record) through the wire, as ``coordinator/service.py`` does;
- ``StateRound`` drives a pure ``RoundState`` with real ``secure_agg`` clients the way the
  round machine, ingest and the driver would, storing every record when given a store;
- ``SimAgent`` is an edge agent in process against a ``RoundMachine`` (check-in, watch,
  submit, upload, retry of what the coordinator asks to retry);
- ``RecordingListener`` records every ``RoundListener`` call (and may forward it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import shutil
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator import serde
from coordinator.blobs import BlobStore, InputSpool
from coordinator.config import CoordinatorConfig, Deadlines, Limits, SecureAggregationSettings
from coordinator.domain import (
    Client,
    InputChunkRecord,
    ModelVersion,
    Participant,
    Round,
    RoundOutcome,
    RoundPhase,
    RoundSums,
)
from coordinator.errors import BlobError, CoordinatorError, ErrorCode, StoreError
from coordinator.reasons import Dropped, RoundAbortReason, stored_drops
from coordinator.replay import (
    AgentRecord,
    DropRecord,
    ShareBatch,
    input_messages,
    replay,
    write_record,
)
from coordinator.round_machine import Parse
from coordinator.round_settings import RoundSettings, plan_round
from coordinator.round_state import Advance, Decision, Received, RoundEvent, RoundState
from coordinator.store import schema
from coordinator.store.sql import SqlStore
from coordinator.waiting_room import Assignment
from edge_client import wire
from secure_agg import (
    AdvertiseKeys,
    ClientAbort,
    ClientMaskedInput,
    ClientMessage,
    ClientState,
    ConsistencySignature,
    MaskedInput,
    MaskedInputChunk,
    SecAggError,
    SegmentLayout,
    ShareKeys,
    UnmaskResponse,
    decode_sum,
    encode,
    start_client,
)
from secure_agg.signing import identity_public_bytes
from tests.coordinator.store.factories import T0, enroll, version

__all__ = [
    "T0",
    "Clock",
    "FailingBlobStore",
    "FailingSpool",
    "FailingStore",
    "FakeSleep",
    "Member",
    "RecordingListener",
    "SimAgent",
    "StateRound",
    "chunk_bytes",
    "expected_sums",
    "identity_key",
    "migrated_template",
    "open_sqlite",
    "parse_for",
    "small_config",
    "until",
    "update_values",
]

T = TypeVar("T")


# --- time -------------------------------------------------------------------------------


class Clock:
    """A settable UTC clock: ``clock()`` is ``now`` until the test moves it."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class FakeSleep:
    """The driver's ``sleep``: records each delay (and, with ``probe``, what the probe saw
    then) and returns at once, or once ``gate`` is set."""

    def __init__(self, probe: Callable[[], object] | None = None) -> None:
        self.delays: list[float] = []
        self.seen: list[object] = []
        self.probe = probe
        self.gate: asyncio.Event | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.probe is not None:
            self.seen.append(self.probe())
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(0)


async def until(
    condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Wait (polling, real time) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


# --- faults on demand -------------------------------------------------------------------


def unavailable(method: str) -> StoreError:
    return StoreError(ErrorCode.STORE_UNAVAILABLE, f"injected: the database is down ({method})")


class FailingStore:
    """A real store behind a wrapper that fails chosen methods on demand.

    Every attribute is forwarded to ``inner``. ``fail(method, times, after=k)`` lets ``k``
    calls of ``method`` through, then makes the next ``times`` calls raise
    ``StoreError(STORE_UNAVAILABLE)`` (or ``error``) before the real method runs, so nothing
    is written. ``calls`` counts every call, ``raised`` lists the injected errors.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.raised: list[tuple[str, BaseException]] = []
        self._plans: dict[str, list[tuple[int, int, BaseException | None]]] = {}
        self._lock = threading.Lock()

    def fail(
        self, method: str, times: int = 1, *, after: int = 0, error: BaseException | None = None
    ) -> None:
        if not callable(getattr(self.inner, method, None)):
            raise AttributeError(f"the store has no method {method}")
        with self._lock:
            start = self.calls[method] + after
            self._plans.setdefault(method, []).append((start, start + times, error))

    def pending(self, method: str) -> bool:
        """Whether some planned failure of ``method`` has not happened yet."""
        with self._lock:
            return any(end > self.calls[method] for _, end, _ in self._plans.get(method, []))

    def _planned(self, method: str) -> BaseException | None:
        with self._lock:
            index = self.calls[method]
            self.calls[method] += 1
            for start, end, error in self._plans.get(method, []):
                if start <= index < end:
                    chosen = error if error is not None else unavailable(method)
                    self.raised.append((method, chosen))
                    return chosen
        return None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            error = self._planned(name)
            if error is not None:
                raise error
            return attr(*args, **kwargs)

        return call


class FailingBlobStore(BlobStore):
    """A real blob store whose ``put`` (and so ``put_array``) fails on demand, as a full
    disk makes it fail: ``BlobError(STORAGE_UNAVAILABLE)``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0
        self.failed_puts = 0
        self._fail_next = 0

    def fail_puts(self, times: int = 1) -> None:
        self._fail_next += times

    def put(self, data: bytes) -> str:
        self.puts += 1
        if self._fail_next:
            self._fail_next -= 1
            self.failed_puts += 1
            raise BlobError(
                ErrorCode.STORAGE_UNAVAILABLE,
                "injected: writing a blob failed: [Errno 28] No space left",
            )
        return super().put(data)


class FailingSpool(InputSpool):
    """A real input spool whose ``write_chunk`` fails on demand with ``BlobError``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes = 0
        self.failed_writes = 0
        self._fail_next = 0

    def fail_writes(self, times: int = 1) -> None:
        self._fail_next += times

    def write_chunk(self, round_id: str, secagg_id: int, *, offset_bytes: int, data: bytes) -> None:
        self.writes += 1
        if self._fail_next:
            self._fail_next -= 1
            self.failed_writes += 1
            raise BlobError(
                ErrorCode.STORAGE_UNAVAILABLE,
                "injected: spooling a chunk failed: [Errno 28] No space left",
            )
        super().write_chunk(round_id, secagg_id, offset_bytes=offset_bytes, data=data)


# --- SQLite -----------------------------------------------------------------------------


def migrated_template(directory: Path) -> Path:
    """A migrated SQLite database file under ``directory``, to copy for each test."""
    path = directory / "coordinator.db"
    schema.upgrade(f"sqlite:///{path}")
    return path


def open_sqlite(template: Path, directory: Path) -> tuple[SqlStore, str]:
    """A store on a fresh copy of ``template`` in ``directory``, and its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "coordinator.db"
    shutil.copyfile(template, path)
    url = f"sqlite:///{path}"
    return SqlStore(url), url


# --- configuration and inputs -----------------------------------------------------------


def small_config(
    *,
    secure: bool = True,
    cohort: int = 5,
    min_clients: int = 3,
    rounds: int = 1,
    chunk_elements: int = 64,
    task: str = "digits-cnn",
    deadlines: Deadlines | None = None,
) -> CoordinatorConfig:
    """A coordinator configuration for small in-process rounds (no over-selection)."""
    return CoordinatorConfig(
        task=task,
        rounds=rounds,
        cohort=cohort,
        min_clients=min_clients,
        over_selection=0.0,
        local_steps=5,
        batch_size=8,
        secure_aggregation=SecureAggregationSettings(enabled=secure),
        deadlines=deadlines if deadlines is not None else Deadlines(),
        limits=Limits(chunk_elements=chunk_elements),
    )


def identity_key(label: str) -> Ed25519PrivateKey:
    """A deterministic Ed25519 identity key."""
    return Ed25519PrivateKey.from_private_bytes(random.Random(f"identity/{label}").randbytes(32))


def seeded(label: str) -> Callable[[int], bytes]:
    """A deterministic stand-in for ``os.urandom``."""
    return random.Random(f"source/{label}").randbytes


def update_values(layout: SegmentLayout, seed: int) -> dict[str, np.ndarray]:
    """One client's values for every non-counter segment, inside the clip ranges (so the
    decoded sum is the plain sum to within quantization); its weight is 1."""
    rng = np.random.default_rng(seed)
    values = {}
    for segment in layout.segments:
        if segment.is_clip_counter:
            continue
        if segment.name == "weight":
            values[segment.name] = np.ones(segment.length)
            continue
        span = segment.high - segment.low
        values[segment.name] = rng.uniform(
            segment.low + 0.1 * span, segment.high - 0.1 * span, size=segment.length
        )
    return values


def ring_sum(layout: SegmentLayout, vectors: Iterable[np.ndarray]) -> np.ndarray:
    total = np.zeros(layout.length, dtype=layout.dtype)
    for vector in vectors:
        np.add(total, vector, out=total)
    return total


def expected_sums(layout: SegmentLayout, encoded: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """What a round over these encoded inputs must decode to: their ring sum, decoded."""
    return decode_sum(layout, ring_sum(layout, encoded), num_clients=len(encoded))


def chunk_bytes(vector: np.ndarray, settings: RoundSettings, index: int) -> bytes:
    """Upload chunk ``index`` of a masked (or, plain, encoded) vector, little-endian."""
    little = vector.astype(vector.dtype.newbyteorder("<"), copy=False)
    start = index * settings.chunk_elements
    return little[start : start + settings.chunk_length(index)].tobytes()


# --- messages, as the service parses them -----------------------------------------------


def parse_for(message: ClientMessage, round_id: str, identity: Callable[[int], bytes]) -> Parse:
    """The service's ``Parse`` for what a ``secure_agg`` client sent: the message goes over
    the wire (``edge_client.wire``) and back through ``coordinator.serde``, as the servicer
    parses a request; ``identity`` gives a client id's enrolled key."""
    if isinstance(message, AdvertiseKeys):
        advert = wire.advertise_to_proto(message)

        def parse_advert(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            return serde.advertise_from_proto(
                advert, secagg_id=p.secagg_id, identity_key=identity(p.client_id)
            )

        return parse_advert
    if isinstance(message, ShareKeys):
        shares = wire.shares_to_proto(message, round_id)

        def parse_shares(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            parsed, records = serde.shares_from_proto(
                shares, secagg_id=p.secagg_id, cohort_size=len(state.participants)
            )
            return parsed, ShareBatch(round_id, p.secagg_id, tuple(records))

        return parse_shares
    if isinstance(message, ConsistencySignature):
        signature = wire.signature_to_proto(message, round_id)

        def parse_signature(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            return serde.signature_from_proto(signature, secagg_id=p.secagg_id)

        return parse_signature
    if isinstance(message, UnmaskResponse):
        unmask = wire.unmask_to_proto(message, round_id)

        def parse_unmask(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            return serde.unmask_from_proto(
                unmask, secagg_id=p.secagg_id, cohort_size=len(state.participants)
            )

        return parse_unmask
    if isinstance(message, ClientAbort):
        dropped = Dropped.client_left(message.reason.value)

        def parse_abort(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            assert dropped.client_reason is not None
            notice = ClientAbort(
                round_id=round_id, client_id=p.secagg_id, reason=dropped.client_reason
            )
            return notice, DropRecord(round_id, p.secagg_id, dropped)

        return parse_abort
    raise TypeError(f"no request carries a {type(message).__name__}")


# --- a pure round, driven as the service would drive it ---------------------------------


@dataclasses.dataclass(eq=False)
class Member:
    """One participant of a ``StateRound``: its identity, its secure_agg client, its input."""

    client_id: int
    secagg_id: int
    key: Ed25519PrivateKey
    values: dict[str, np.ndarray]
    encoded: np.ndarray
    client: ClientState | None = None
    vector: np.ndarray | None = None  # what it uploads: masked (secure) or encoded (plain)

    @property
    def public_key(self) -> bytes:
        return identity_public_bytes(self.key)


class StateRound:
    """A ``RoundState`` driven by real ``secure_agg`` clients.

    ``submit`` does what ``RoundMachine.submit`` does (check, receive, store the record or
    the drop, raise the refusal), ``upload`` what ingest does (spool, receipt, sum once
    whole), ``close`` what the driver does with an ``Advance`` (store the transition, then
    apply it). With ``store`` (and ``spool``), every record is written as the service
    writes it, so ``replay`` can rebuild the round; without, nothing leaves memory.
    """

    def __init__(
        self,
        state: RoundState,
        members: Sequence[Member],
        *,
        store: Any = None,
        spool: InputSpool | None = None,
        clock: Clock,
    ) -> None:
        self.state = state
        self.members = {m.secagg_id: m for m in members}
        self.store = store
        self.spool = spool
        self.clock = clock
        self.decisions: list[Decision] = []

    @classmethod
    def open(
        cls,
        config: CoordinatorConfig,
        *,
        members: int = 5,
        store: Any = None,
        spool: InputSpool | None = None,
        round_id: str = "r1",
        model_length: int = 200,
        num_blocks: int = 4,
        clock: Clock | None = None,
    ) -> StateRound:
        """A round of ``members`` just opened in ADVERTISE_KEYS (stored, with a store)."""
        clock = clock if clock is not None else Clock()
        keys = [identity_key(f"{round_id}/{i}") for i in range(1, members + 1)]
        base: ModelVersion = version(0)
        if store is not None:
            if store.latest_version() is None:
                store.add_initial_version(base)
            client_ids = [
                enroll(store, f"{round_id}-m{i}", key=identity_public_bytes(key)).client_id
                for i, key in enumerate(keys, start=1)
            ]
        else:
            client_ids = [100 + i for i in range(1, members + 1)]
        settings = plan_round(
            config,
            round_id=round_id,
            number=0,
            version=base,
            cohort_size=members,
            model_length=model_length,
            num_blocks=num_blocks,
            block_mode="full" if num_blocks else None,
            blob_sizes={"model": 4 * model_length, "second_moment": 8 * num_blocks},
        )
        participants = [
            Participant(round_id=round_id, client_id=c, secagg_id=i)
            for i, c in enumerate(client_ids, start=1)
        ]
        now = clock()
        round_ = Round(
            round_id=round_id,
            number=0,
            model_version=base.version,
            phase=RoundPhase.ADVERTISE_KEYS,
            outcome=RoundOutcome.RUNNING,
            config=settings.to_json(),
            started_at=now,
            deadline=now + settings.phase_duration(RoundPhase.ADVERTISE_KEYS),
        )
        if store is not None:
            store.create_round(round_, participants)
        layout = settings.layout
        roster = []
        for p, key in zip(participants, keys, strict=True):
            values = update_values(layout, seed=p.secagg_id)
            encoded = encode(layout, values, source=seeded(f"{round_id}/q/{p.secagg_id}"))
            roster.append(Member(p.client_id, p.secagg_id, key, values, encoded))
        identity = {m.secagg_id: m.public_key for m in roster}
        state = RoundState.opened(round_, settings, participants, identity, now=now)
        return cls(state, roster, store=store, spool=spool, clock=clock)

    # --- who is who -----------------------------------------------------------------

    @property
    def settings(self) -> RoundSettings:
        return self.state.settings

    @property
    def round_id(self) -> str:
        return self.state.round_id

    @property
    def phase(self) -> RoundPhase:
        return self.state.phase

    @property
    def identity(self) -> dict[int, bytes]:
        """Secagg id → enrolled identity key (what the driver gives replay)."""
        return {s: m.public_key for s, m in self.members.items()}

    def enrolled_key(self, client_id: int) -> bytes:
        return next(m.public_key for m in self.members.values() if m.client_id == client_id)

    def alive(self) -> list[Member]:
        return [self.members[s] for s in sorted(self.state.aggregation.alive)]

    def expected(self, survivors: Collection[int]) -> dict[str, np.ndarray]:
        """The decoded sum of these secagg ids' encoded inputs."""
        return expected_sums(
            self.settings.layout, [self.members[s].encoded for s in sorted(survivors)]
        )

    def plain_sum(self, survivors: Collection[int], segment: str) -> np.ndarray:
        """The float sum of these secagg ids' unquantized values of one segment."""
        return np.sum([self.members[s].values[segment] for s in sorted(survivors)], axis=0)

    # --- the service's side ---------------------------------------------------------

    def submit(self, member: Member, message: ClientMessage) -> Received:
        """What ``RoundMachine.submit`` does with one request."""
        state = self.state
        participant = state.member(member.client_id, state.phase)
        parsed, record = parse_for(message, self.round_id, self.enrolled_key)(state, participant)
        received = state.receive(participant, parsed)
        if received.drop is not None:
            record = DropRecord(self.round_id, participant.secagg_id, received.drop)
        elif received.refusal is not None:
            raise received.refusal
        if self.store is not None:
            try:
                write_record(record, self.store)
            except StoreError as exc:
                state.store_failed(exc.code)
                raise
        if received.refusal is not None:
            raise received.refusal
        return received

    def leave(self, member: Member, reason: str = "cancelled") -> Received:
        """What ``RoundMachine.client_abort`` does."""
        participant = self.state.member(member.client_id, self.phase)
        self.state.may_leave(participant, self.phase)
        dropped = Dropped.client_left(reason)
        assert dropped.client_reason is not None
        notice = ClientAbort(
            round_id=self.round_id, client_id=member.secagg_id, reason=dropped.client_reason
        )
        return self.submit(member, notice)

    def upload(self, member: Member, chunks: Iterable[int] | None = None) -> None:
        """What ingest does with each chunk: stage it durably, then sum the whole input."""
        state = self.state
        settings = state.settings
        participant = state.member(member.client_id, RoundPhase.MASKED_INPUT)
        secagg = participant.secagg_id
        assert member.vector is not None
        itemsize = settings.layout.dtype.itemsize
        indices = range(settings.total_chunks) if chunks is None else chunks
        for index in indices:
            data = chunk_bytes(member.vector, settings, index)
            digest = _sha256(data)
            if state.chunk_is_new(secagg, index, digest):
                if self.spool is not None:
                    self.spool.write_chunk(
                        self.round_id,
                        secagg,
                        offset_bytes=index * settings.chunk_elements * itemsize,
                        data=data,
                    )
                if self.store is not None:
                    self.store.add_input_chunk(
                        InputChunkRecord(self.round_id, secagg, index, digest)
                    )
                state.chunk_stored(secagg, index, digest)
        if state.input_ready(secagg):
            if self.store is not None:
                try:
                    self.store.mark_input_complete(self.round_id, secagg)
                except StoreError as exc:
                    state.store_failed(exc.code)
                    raise
            state.feed_input(secagg, self._input(member))

    def _input(self, member: Member) -> Iterable[MaskedInputChunk]:
        if self.spool is not None:
            return input_messages(
                self.settings, self.spool, member.secagg_id, self.state.session_id
            )
        assert member.vector is not None
        step = self.settings.chunk_elements
        return [
            MaskedInputChunk(
                session_id=self.state.session_id,
                client_id=member.secagg_id,
                offset=offset,
                values=member.vector[offset : offset + step],
            )
            for offset in range(0, member.vector.shape[0], step)
        ]

    # --- the agents' side -----------------------------------------------------------

    def respond(self, member: Member, *, chunks: Iterable[int] | None = None) -> None:
        """The member answers the current phase, from the event a watcher sees now."""
        phase = self.phase
        if not self.settings.secure:
            if phase is RoundPhase.MASKED_INPUT:
                member.vector = member.encoded
                self.upload(member, chunks)
            return
        if phase is RoundPhase.ADVERTISE_KEYS:
            step = start_client(
                self.settings.session(),
                client_id=member.secagg_id,
                identity_key=member.key,
                source=seeded(f"{self.round_id}/client/{member.secagg_id}"),
            )
            member.client = step.state
            assert step.message is not None
            self.submit(member, step.message)
            return
        message = self.state.current_event(member.secagg_id).message
        assert message is not None, f"no {phase.value} message for {member.secagg_id}"
        assert member.client is not None
        step = member.client.handle(message)
        member.client = step.state
        if isinstance(step.state, ClientMaskedInput):
            masked = step.state.mask(member.encoded)
            member.client = masked.state
            assert isinstance(masked.message, MaskedInput)
            member.vector = np.asarray(masked.message.values)
            self.upload(member, chunks)
        elif step.message is not None:
            assert not isinstance(step.message, ClientAbort), step.message
            self.submit(member, step.message)

    # --- the driver's side ----------------------------------------------------------

    def close(self) -> Decision:
        """Close the phase; an ``Advance`` is stored (with a store), then applied."""
        decision = self.state.close(self.clock())
        self.decisions.append(decision)
        if isinstance(decision, Advance):
            now = self.clock()
            if self.store is not None:
                round_ = self.store.advance_phase(
                    self.round_id,
                    expected=decision.phase,
                    new=decision.new_phase,
                    now=now,
                    deadline=decision.deadline,
                    dropped=stored_drops(decision.dropped),
                )
            else:
                round_ = dataclasses.replace(
                    self.state.round, phase=decision.new_phase, deadline=decision.deadline
                )
            self.state.advanced(round_, decision, now)
        return decision

    def play_phase(self, silent: Collection[int] = ()) -> Decision:
        """Every alive member but ``silent`` answers, then the phase closes."""
        for member in self.alive():
            if member.secagg_id not in silent:
                self.respond(member)
        return self.close()

    def play(self, silent: Mapping[RoundPhase, Collection[int]] | None = None) -> list[Decision]:
        """Phases until one does not ``Advance``; ``silent`` names who stays quiet where."""
        silent = silent or {}
        decisions = []
        while True:
            decision = self.play_phase(silent.get(self.phase, ()))
            decisions.append(decision)
            if not isinstance(decision, Advance):
                return decisions

    def play_until(self, phase: RoundPhase) -> None:
        """Every alive member answers every phase before ``phase``."""
        while self.phase is not phase:
            decision = self.play_phase()
            assert isinstance(decision, Advance), decision

    def replayed(self, *, deadline: datetime | None = None) -> RoundState:
        """The round rebuilt from the store, as a restarted driver rebuilds it."""
        assert self.store is not None
        assert self.spool is not None
        stored = self.store.get_round(self.round_id)
        return replay(
            stored,
            store=self.store,
            spool=self.spool,
            identity=self.identity,
            deadline=deadline if deadline is not None else stored.deadline,
            now=self.clock(),
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- an agent in process, against a RoundMachine -----------------------------------------


class AgentStoppedError(Exception):
    """The agent ended its part in the round (dropped, silent or refused)."""


class SimAgent:
    """An edge agent in process: check-in, then the round through the machine's calls.

    It does what ``edge_client.session.RoundSession`` does, minus the network: run
    ``secure_agg``'s client on each watched event, submit what it answers (through
    ``parse_for``, as the servicer parses a request), upload the masked input chunk by
    chunk resuming from the upload status, retry a call the coordinator refuses with
    STORE_UNAVAILABLE or STORAGE_UNAVAILABLE (gRPC UNAVAILABLE), and watch again when the
    stream breaks. Its state
    survives ``run`` being cancelled, so it can go on against a restarted coordinator.

    A watch stream that brings nothing for ``idle_rewatch`` seconds is closed and opened
    again (an idle timeout; the first event of a new stream is the current phase's, which
    it has answered already). That also gets it past a stream left on a retired round
    (the race that ``test_driver.test_a_watch_that_waited_for_the_lock_of_a_retired_round
    _is_told_to_watch_again`` pins), so the fault tests check the driver itself.

    Behaviours: ``silent_at`` (stops answering in that phase), ``leave_at`` (sends
    AbortRound there), ``hold_at`` (waits for ``release`` before answering that phase;
    in MASKED_INPUT it first uploads ``chunks_before_hold`` chunks).
    """

    def __init__(
        self,
        client: Client,
        key: Ed25519PrivateKey,
        *,
        seed: int,
        silent_at: RoundPhase | None = None,
        leave_at: RoundPhase | None = None,
        hold_at: RoundPhase | None = None,
        chunks_before_hold: int = 0,
        retry: Collection[ErrorCode] = (
            ErrorCode.STORE_UNAVAILABLE,
            ErrorCode.STORAGE_UNAVAILABLE,
        ),
        idle_rewatch: float = 1.0,
    ) -> None:
        self.client = client
        self.key = key
        self.seed = seed
        self.silent_at = silent_at
        self.leave_at = leave_at
        self.hold_at = hold_at
        self.chunks_before_hold = chunks_before_hold
        self.retry = frozenset(retry)
        self.idle_rewatch = idle_rewatch
        self.rewatches = 0  # watch streams it gave up on for want of events
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.round_id = ""
        self.secagg_id = 0
        self.settings: RoundSettings | None = None
        self.state: ClientState | None = None
        self.values: dict[str, np.ndarray] | None = None
        self.encoded: np.ndarray | None = None
        self.vector: np.ndarray | None = None
        self.uploaded = False
        self.seen = RoundPhase.ADVERTISE_KEYS
        self.acked: set[RoundPhase] = set()
        self.errors: list[CoordinatorError] = []  # every refusal it retried
        self.result: RoundEvent | None = None
        self.stopped = ""  # why it ended its part early, if it did
        self.failure: CoordinatorError | None = None

    @property
    def client_id(self) -> int:
        return self.client.client_id

    async def check_in(self, machine: Any, *, wait: float = 60.0) -> None:
        answer = await machine.check_in(self.client, task=machine.config.task, wait=wait)
        assert isinstance(answer, Assignment), answer
        self.round_id = answer.round_id
        self.secagg_id = answer.secagg_id

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        for _ in range(2000):
            try:
                return await call()
            except CoordinatorError as exc:
                if exc.code not in self.retry:
                    raise
                self.errors.append(exc)
                await asyncio.sleep(0.005)
        raise AssertionError(f"client {self.client_id}: the coordinator never accepted")

    async def run(self, machine: Any) -> RoundEvent | None:
        """The round to its end: the final event, or None if the agent stopped."""
        try:
            return await self._run(machine)
        except AgentStoppedError as stop:
            self.stopped = str(stop)
            return None
        except CoordinatorError as exc:  # a refusal it does not retry ends its round
            self.stopped = f"refused ({exc.code.value}): {exc}"
            self.failure = exc
            return None

    async def _run(self, machine: Any) -> RoundEvent | None:
        if self.settings is None:
            settings, _, _, _ = machine.round_settings(self.client_id, self.round_id)
            self.settings = settings
            self.values = update_values(settings.layout, self.seed)
            self.encoded = encode(
                settings.layout, self.values, source=seeded(f"{self.round_id}/q/{self.seed}")
            )
        if self.state is None and self.settings.secure:
            await self._phase_gate(machine, RoundPhase.ADVERTISE_KEYS)
            step = start_client(
                self.settings.session(),
                client_id=self.secagg_id,
                identity_key=self.key,
                source=seeded(f"{self.round_id}/client/{self.seed}"),
            )
            self.state = step.state
            assert step.message is not None
            await self._submit(machine, RoundPhase.ADVERTISE_KEYS, step.message)
        while True:
            stream = machine.watch(self.client_id, self.round_id, self.seen)
            try:
                while True:
                    try:
                        # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel
                        # that comes as the awaited event does (CPython gh-86296).
                        async with asyncio.timeout(self.idle_rewatch):
                            event = await anext(stream)
                    except TimeoutError:
                        self.rewatches += 1
                        break  # the stream went quiet: watch again
                    if event.outcome is not None:
                        self.result = event
                        return event
                    await self._on_event(machine, event)
            except CoordinatorError as exc:
                if exc.code not in self.retry:
                    raise
                self.errors.append(exc)
                await asyncio.sleep(0.005)
            finally:
                await stream.aclose()

    async def _phase_gate(self, machine: Any, phase: RoundPhase) -> None:
        """What the behaviours do at the start of ``phase``."""
        if phase is self.silent_at:
            raise AgentStoppedError(f"silent in {phase.value}")
        if phase is self.leave_at:
            await self._retrying(
                lambda: machine.client_abort(self.client_id, self.round_id, phase, "cancelled")
            )
            raise AgentStoppedError(f"left in {phase.value}")
        if phase is self.hold_at and not self.release.is_set():
            self.holding.set()
            await self.release.wait()

    async def _on_event(self, machine: Any, event: RoundEvent) -> None:
        phase = event.phase
        self.seen = phase
        assert self.settings is not None
        if not self.settings.secure:
            if phase is RoundPhase.MASKED_INPUT and not self.uploaded:
                await self._phase_gate(machine, phase)
                self.vector = self.encoded
                await self._upload(machine)
            return
        if event.message is None:
            if phase is RoundPhase.ADVERTISE_KEYS:
                return
            raise AgentStoppedError(f"dropped: {phase.value} opened without us")
        if phase in self.acked:
            return  # answered already: an event seen again after watching again
        # A partial upload before the hold: answer first, hold after the first chunks.
        partial = (
            phase is RoundPhase.MASKED_INPUT
            and phase is self.hold_at
            and self.chunks_before_hold > 0
        )
        if not partial:
            await self._phase_gate(machine, phase)
        await self._answer(machine, event)
        if phase is RoundPhase.MASKED_INPUT and not self.uploaded:
            if partial and not self.release.is_set():
                await self._upload(machine, limit=self.chunks_before_hold)
                await self._phase_gate(machine, phase)
            await self._upload(machine)

    async def _answer(self, machine: Any, event: RoundEvent) -> None:
        """Run the client state machine on the event's message; send what it answers."""
        assert self.state is not None
        assert event.message is not None
        try:
            step = self.state.handle(event.message)
        except SecAggError:
            return  # handled before (the answer went out, or the input is masked)
        self.state = step.state
        if isinstance(step.state, ClientMaskedInput):
            assert self.encoded is not None
            masked = step.state.mask(self.encoded)
            self.state = masked.state
            assert isinstance(masked.message, MaskedInput)
            self.vector = np.asarray(masked.message.values)
        elif step.message is not None:
            if isinstance(step.message, ClientAbort):
                raise AgentStoppedError(f"refused: {step.message.reason.value}")
            await self._submit(machine, event.phase, step.message)

    async def _submit(self, machine: Any, phase: RoundPhase, message: ClientMessage) -> None:
        parse = parse_for(message, self.round_id, machine.identity_key)
        await self._retrying(lambda: machine.submit(self.client_id, self.round_id, phase, parse))
        self.acked.add(phase)

    async def _upload(self, machine: Any, *, limit: int | None = None) -> None:
        assert self.settings is not None
        assert self.vector is not None
        settings, vector = self.settings, self.vector

        async def send_missing() -> bool:
            progress = machine.upload_progress(self.client_id, self.round_id)
            if progress.complete:
                return True
            missing = [i for i in range(settings.total_chunks) if i not in progress.received]
            if limit is not None:
                missing = missing[: max(0, limit - len(progress.received))]
            elif not missing:
                # What edge_client/session.py does next: an UploadMaskedInput stream with no
                # chunk in it, which the servicer refuses and the agent does not retry.
                raise CoordinatorError(
                    ErrorCode.INVALID_ARGUMENT, "the upload stream held no chunk"
                )
            complete = False
            for index in missing:
                answer = await machine.upload_chunk(
                    self.client_id,
                    self.round_id,
                    RoundPhase.MASKED_INPUT,
                    index,
                    chunk_bytes(vector, settings, index),
                )
                complete = answer.complete
            return complete

        # As RoundSession._upload_chunks: status, the missing chunks, again until complete.
        for _ in range(1000):
            complete = await self._retrying(send_missing)
            if limit is not None:
                return
            if complete:
                self.uploaded = True
                self.acked.add(RoundPhase.MASKED_INPUT)
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"client {self.client_id}: the upload never completed")


# --- a listener that records ------------------------------------------------------------


class RecordingListener:
    """A ``RoundListener`` that records each call as ``(name, args)`` and forwards it to
    ``inner`` (an ``ObservingListener``, so its logging and metrics run too)."""

    def __init__(self, inner: Any = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.states: list[tuple[str, RoundPhase]] = []  # the phase a state was in, then
        self.inner = inner

    def _note(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        for arg in args:
            if isinstance(arg, RoundState):  # live objects: note what they said then
                self.states.append((name, arg.phase))
        if self.inner is not None:
            getattr(self.inner, name)(*args)

    def phases(self, name: str) -> list[RoundPhase]:
        """The phase of the round state each ``name`` call was given, when it was made."""
        return [phase for n, phase in self.states if n == name]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]

    def initial_version_stored(self, version: ModelVersion, parameters: int) -> None:
        self._note("initial_version_stored", version, parameters)

    def round_started(self, state: RoundState, selected: int) -> None:
        self._note("round_started", state, selected)

    def round_resumed(self, state: RoundState) -> None:
        self._note("round_resumed", state)

    def resume_failed(self, round_: Round, error: Exception) -> None:
        self._note("resume_failed", round_, error)

    def dropped(self, phase: RoundPhase, dropped: Mapping[int, Dropped]) -> None:
        self._note("dropped", phase, dict(dropped))

    def refused_and_dropped(
        self, state: RoundState, participant: Participant, dropped: Dropped, error: Exception
    ) -> None:
        self._note("refused_and_dropped", state, participant, dropped, error)

    def phase_closed(self, state: RoundState, decision: Advance, seconds: float) -> None:
        self._note("phase_closed", state, decision, seconds)

    def unmasked(self, seconds: float) -> None:
        self._note("unmasked", seconds)

    def committed(self, round_: Round, version: ModelVersion, sums: RoundSums) -> None:
        self._note("committed", round_, version, sums)

    def aborted(self, round_: Round, phase: RoundPhase, reason: RoundAbortReason) -> None:
        self._note("aborted", round_, phase, reason)

    def aborts_in_a_row(self, count: int, reason: RoundAbortReason, delay: float) -> None:
        self._note("aborts_in_a_row", count, reason, delay)

    def culprits(self, state: RoundState, clients: tuple[int, ...], reason: str) -> None:
        self._note("culprits", state, clients, reason)

    def round_ended(self, outcome: RoundOutcome, survivors: int, seconds: float) -> None:
        self._note("round_ended", outcome, survivors, seconds)

    def evaluated(self, version: ModelVersion, evaluation: Any) -> None:
        self._note("evaluated", version, evaluation)

    def evaluation_failed(self, version: ModelVersion, error: Exception) -> None:
        self._note("evaluation_failed", version, error)

    def training_finished(self, rounds: int) -> None:
        self._note("training_finished", rounds)

    def retention_applied(self, report: Any) -> None:
        self._note("retention_applied", report)

    def round_not_started(self, error: Exception) -> None:
        self._note("round_not_started", error)

    def selected_client_revoked(self, error: Exception) -> None:
        self._note("selected_client_revoked", error)

    def driver_fault(
        self, stage: str, state: RoundState | None, error: Exception, delay: float, faults: int
    ) -> None:
        self._note("driver_fault", stage, state, error, delay, faults)

    def driver_recovered(self, faults: int) -> None:
        self._note("driver_recovered", faults)

    def audit_failed(self, action: str, error: Exception) -> None:
        self._note("audit_failed", action, error)

    def driver_died(self, stage: str, error: BaseException) -> None:
        self._note("driver_died", stage, error)

"""Network faults between agents and a real coordinator, through ``FaultProxy``.

Every agent reaches the coordinator's agent port through a proxy of its own (mutual TLS
passes through it untouched), so a test can slow, stall, reset or cut one agent's network
while the others run normally. The coordinator is the real ``fedadamw-coordinator run``
process (TLS, SQLite); the agents are the harness's in-process ``TestAgent`` with the
agent's own ``RoundSession``, and one real ``fedadamw-edge run`` process for the check-in
loop's backoff. A fault is injected right before the agent sends its message for a phase.

Each case checks the invariants: the round commits (or the faulted agent is dropped and the
round commits with the others), the next round commits with every agent, model versions
move forward one per committed round, the coordinator stays healthy and never answers
INTERNAL, and what happened shows in the coordinator's status, metrics and the proxy's
counters. ``OBSERVED`` collects one row per case; after the module they are printed as a
fault × phase table (and written to ``$FAULTS_TABLE``, if set).

Three coordinators: ``SETTLED`` (long deadlines, shared by the tests that expect every
agent to ride the fault out), ``PAST`` (short deadlines, for cuts that outlast them) and
the ``Lonely`` one; the last two start in the background with the module's first test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.blobs import BlobStore
from coordinator.errors import CoordinatorError
from coordinator.store.sql import SqlStore, default_sqlite_url
from edge_client.enrollment import Credentials, mutual_tls_channel
from edge_client.retry import ROUND
from edge_client.session import Outcome, RoundInputs, RoundResult, RoundSession
from tests.e2e.harness import (
    FAST,
    AgentProcess,
    Coordinator,
    TestAgent,
    edge,
    free_port,
    merged,
)
from tests.faults import matrix
from tests.faults.proxy import FaultProxy, Loss
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

T = TypeVar("T")

COHORT = 5  # t-of-5 with min_clients 3: one agent may drop in any phase

PHASES = [
    (pb.PHASE_ADVERTISE_KEYS, "advertise_keys"),
    (pb.PHASE_SHARE_KEYS, "share_keys"),
    (pb.PHASE_MASKED_INPUT, "masked_input"),
    (pb.PHASE_CONSISTENCY_CHECK, "consistency_check"),
    (pb.PHASE_UNMASKING, "unmasking"),
]
PHASE_NAME = dict(PHASES)

PHASE_OF_CALL = {
    "AdvertiseKeys": pb.PHASE_ADVERTISE_KEYS,
    "ShareKeys": pb.PHASE_SHARE_KEYS,
    "SubmitConsistencySignature": pb.PHASE_CONSISTENCY_CHECK,
    "Unmask": pb.PHASE_UNMASKING,
}


@dataclass(frozen=True)
class Row:
    """One observed case, for the fault × phase table."""

    fault: str
    phase: str
    outcome: str
    detail: str


OBSERVED: list[Row] = []


def table(rows: list[Row]) -> str:
    """The observed rows as a Markdown table."""
    lines = ["| fault | phase | outcome | observed |", "|---|---|---|---|"]
    lines += [f"| {r.fault} | {r.phase} | {r.outcome} | {r.detail} |" for r in rows]
    return "\n".join(lines)


SETTLED = merged(
    FAST,
    rounds=100,  # the tests of one coordinator share it; the count is never reached
    cohort=COHORT,
    min_clients=3,
    deadlines={
        "advertise_keys": 15,
        "share_keys": 15,
        "masked_input": 25,
        "consistency_check": 15,
        "unmasking": 15,
    },
)
"""Deadlines well beyond a short cut plus the reconnection after it (the agent's retry
waits double from 0.1-0.3 s, gRPC's reconnection from 1 s): a phase closes as soon as
nobody is pending, so they cost nothing when all goes well."""

PAST = merged(
    SETTLED,
    deadlines={
        "advertise_keys": 3,
        "share_keys": 3,
        "masked_input": 6,
        "consistency_check": 3,
        "unmasking": 3,
    },
)
"""Short deadlines, so that a cut outlasts one cheaply."""


# --- a coordinator whose agents each sit behind a proxy ------------------------------------


class Net:
    """A coordinator, and ``COHORT`` enrolled agents each behind a ``FaultProxy`` of its own.

    Enrollment goes straight to the enrollment port; the agent channel goes through the
    proxy. The server certificate names 127.0.0.1 whatever the port, so the agents' mutual
    TLS checks it through the proxy, which only forwards bytes.
    """

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.root = root
        self.coordinator = Coordinator(root, settings)
        self.proxies: list[FaultProxy] = []
        self.credentials: list[Credentials] = []
        self._starting: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> Net:
        self.coordinator.start()
        self.proxies = [FaultProxy(self.coordinator.address, seed=i).start() for i in range(COHORT)]

        async def enroll() -> list[Credentials]:
            agents = await TestAgent.many(self.coordinator, self.root, COHORT)
            for agent in agents:
                await agent.close()
            return [agent.credentials for agent in agents]

        self.credentials = asyncio.run(enroll())
        return self

    def start_in_background(self) -> None:
        """``start`` in a thread, while other tests run; ``ready`` waits for it."""

        def start() -> None:
            try:
                self.start()
            except BaseException as exc:  # raised again by ready()
                self._error = exc

        self._starting = threading.Thread(target=start, daemon=True)
        self._starting.start()

    def ready(self) -> Net:
        if self._starting is not None:
            self._starting.join(timeout=240)
            assert not self._starting.is_alive(), "the coordinator and its agents never started"
        if self._error is not None:
            raise self._error
        return self

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        self.coordinator.stop()

    def clear_faults(self) -> None:
        for proxy in self.proxies:
            proxy.heal()
            proxy.set_latency()
            proxy.set_bandwidth(None)
            proxy.set_loss(None)

    @contextlib.asynccontextmanager
    async def agents(self) -> AsyncIterator[list[TestAgent]]:
        """``TestAgent``s over fresh channels through the proxies (in this event loop)."""
        agents = []
        for credentials, proxy in zip(self.credentials, self.proxies, strict=True):
            agent = TestAgent(self.coordinator, credentials, self.root)
            await agent.channel.close()  # the coordinator's own port: not used
            agent.channel = mutual_tls_channel(proxy.address, credentials)
            agent.stub = pb_grpc.EdgeServiceStub(agent.channel)
            agents.append(agent)
        try:
            yield agents
        finally:
            for agent in agents:
                await agent.close()

    # --- what the coordinator says ----------------------------------------------------

    def report(self) -> dict[str, Any]:
        """``fedadamw-coordinator status --json``'s report, its rounds oldest first."""
        report = self.coordinator.status(limit=1000)
        report["rounds"].sort(key=lambda r: r["round"])
        return report

    def versions(self) -> list[np.ndarray | None]:
        """Every model version's x, in order; None where retention deleted its blobs."""
        store = SqlStore(default_sqlite_url(self.coordinator.data_dir))
        blobs = BlobStore(self.coordinator.data_dir / "blobs")
        out: list[np.ndarray | None] = []
        try:
            for version in store.list_versions():
                try:
                    out.append(blobs.read_array(version.model_sha256, "<f4").astype(np.float64))
                except CoordinatorError:
                    out.append(None)
        finally:
            store.close()
        return out

    def metrics(self) -> dict[str, float]:
        return scrape(self.coordinator.metrics_port)

    def assert_healthy(self) -> dict[str, float]:
        """The coordinator runs and serves, its driver is not stalled, it never answered
        INTERNAL and it logged no traceback; returns its metrics."""
        coordinator = self.coordinator
        assert coordinator.process is not None
        assert coordinator.process.poll() is None
        assert serving(coordinator)
        values = self.metrics()
        internal = {k: v for k, v in values.items() if 'code="INTERNAL"' in k and v}
        assert not internal, internal
        assert metric(values, "fedadamw_round_driver_stalled") == 0
        log = coordinator.log()
        assert "Traceback" not in log, log[-4000:]
        return values


@dataclass
class Mark:
    """Where a test's rounds start in a shared coordinator's history."""

    rounds: int
    versions: int
    metrics: dict[str, float]

    @classmethod
    def now(cls, net: Net) -> Mark:
        return cls(len(net.report()["rounds"]), len(net.versions()), net.metrics())


def since(net: Net, mark: Mark, contributions: list[list[Update]]) -> list[dict[str, Any]]:
    """The rounds run since ``mark``: one new model version per round, each the one before
    plus the mean of the deltas the round summed (checked where retention kept both
    blobs, at least the last two rounds). Returns their status entries."""
    found = net.versions()
    assert len(found) == mark.versions + len(contributions), "versions did not move one a round"
    checked = 0
    for r, included in enumerate(contributions):
        before, after = found[mark.versions - 1 + r], found[mark.versions + r]
        if before is None or after is None:
            continue
        expected = before + np.mean([u.delta for u in included], axis=0)
        np.testing.assert_allclose(after, expected, atol=2e-6, err_msg=f"round {r}")
        checked += 1
    assert checked >= min(2, len(contributions)), "retention left too few versions to check"
    rounds: list[dict[str, Any]] = net.report()["rounds"][mark.rounds :]
    assert len(rounds) == len(contributions), rounds
    return rounds


def delta(after: dict[str, float], before: dict[str, float], name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def scrape(port: int) -> dict[str, float]:
    """A /metrics page as ``{'name{labels}': value}``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def serving(coordinator: Coordinator) -> bool:
    credentials = grpc.ssl_channel_credentials(root_certificates=coordinator.ca_pem)
    with grpc.secure_channel(coordinator.enroll_address, credentials) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


# --- agents that fault on cue ----------------------------------------------------------------


class Update:
    """A client's update: random values from a seed, remembered for the check."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.delta = np.zeros(0)

    def __call__(self, inputs: RoundInputs) -> dict[str, np.ndarray]:
        self.delta = np.asarray(self.rng.uniform(-0.01, 0.01, size=inputs.model.shape[0]))
        values: dict[str, np.ndarray] = {
            "delta": self.delta,
            "weight": np.ones(1),
            "samples": np.array([32.0]),
            "train_loss": np.array([1.0]),
        }
        if inputs.second_moment.shape[0]:
            values["second_moment"] = np.asarray(
                self.rng.uniform(0, 1e-3, size=inputs.second_moment.shape[0])
            )
        return values


class RecordingStub:
    """The agent's real stub, recording in order what each ``GetUploadStatus`` said was
    durable (a set of chunk indices) and which chunks each upload stream carried (a list)."""

    def __init__(self, stub: pb_grpc.EdgeServiceStub) -> None:
        self._stub = stub
        self.uploads: list[set[int] | list[int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    async def GetUploadStatus(self, request: pb.RoundRef, **kwargs: Any) -> pb.UploadStatus:  # noqa: N802
        status: pb.UploadStatus = await self._stub.GetUploadStatus(request, **kwargs)
        self.uploads.append(set(status.received_chunks))
        return status

    def UploadMaskedInput(  # noqa: N802
        self, requests: AsyncIterator[pb.MaskedInputChunk], **kwargs: Any
    ) -> Any:
        sent: list[int] = []
        self.uploads.append(sent)

        async def recorded() -> AsyncIterator[pb.MaskedInputChunk]:
            async for chunk in requests:
                sent.append(chunk.chunk_index)
                yield chunk

        return self._stub.UploadMaskedInput(recorded(), **kwargs)

    @property
    def streams(self) -> list[list[int]]:
        return [u for u in self.uploads if isinstance(u, list)]

    def resent_acknowledged(self) -> list[int]:
        """Chunks a stream carried although the status before it said they were durable."""
        acked: set[int] = set()
        out = []
        for entry in self.uploads:
            if isinstance(entry, set):
                acked = entry
            else:
                out += [i for i in entry if i in acked]
        return out


class FaultSession(RoundSession):
    """The agent's own session, which calls ``before()`` right before it sends its message
    for ``phase`` (the upload, for masked_input) and ``after()`` once that went through;
    with ``wait``, it first waits that many seconds (so that the others go first)."""

    def __init__(
        self,
        *,
        phase: int,
        before: Callable[[], None],
        after: Callable[[], None] | None = None,
        wait: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.wait = wait
        self.recorder = RecordingStub(self.stub)
        self.stub = cast(pb_grpc.EdgeServiceStub, self.recorder)
        self.fault_phase = phase
        self.before = before
        self.after = after
        self.fired_at: float | None = None  # time.monotonic() of before()
        self.sent_at: float | None = None  # when the phase's message got through
        self.vector_bytes = 0
        self.upload_sleeps: list[float] = []  # the waits the upload's retries asked for
        self._uploading = False
        inner = self.sleep

        async def sleep(seconds: float) -> None:
            if self._uploading:
                self.upload_sleeps.append(seconds)
            await inner(seconds)

        self.sleep = sleep

    def _fire(self, phase: int | None) -> None:
        if phase == self.fault_phase and self.fired_at is None:
            self.fired_at = time.monotonic()
            self.before()

    def _sent(self, phase: int | None) -> None:
        if phase == self.fault_phase and self.fired_at is not None and self.sent_at is None:
            self.sent_at = time.monotonic()
            if self.after is not None:
                self.after()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        phase = PHASE_OF_CALL.get(what)
        if phase == self.fault_phase and self.fired_at is None and self.wait:
            await asyncio.sleep(self.wait)
        self._fire(phase)
        result = await super()._call(what, call)
        self._sent(phase)
        return result

    async def _upload(self, config: pb.RoundConfig, vector: np.ndarray) -> None:
        self.vector_bytes = int(vector.nbytes)
        self._fire(pb.PHASE_MASKED_INPUT)
        self._uploading = True
        try:
            await super()._upload(config, vector)
        finally:
            self._uploading = False
        self._sent(pb.PHASE_MASKED_INPUT)


async def one_round(
    agents: list[TestAgent],
    updates: list[Update],
    faults: dict[int, dict[str, Any]] | None = None,
) -> tuple[list[RoundResult], list[RoundSession]]:
    """Every agent checks in and runs one round; agent i runs a ``FaultSession`` with
    ``faults[i]`` as its arguments where given."""
    faults = faults or {}

    async def run(i: int) -> tuple[RoundResult, RoundSession]:
        assignment = await agents[i].assignment()
        if i in faults:
            session = agents[i].session(assignment, updates[i], FaultSession, **faults[i])
        else:
            session = agents[i].session(assignment, updates[i])
        return await session.run(), session

    done = await asyncio.gather(*(run(i) for i in range(len(agents))))
    return [r for r, _ in done], [s for _, s in done]


def outcomes(results: list[RoundResult]) -> list[Outcome]:
    return [r.outcome for r in results]


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = Net(tmp_path_factory.mktemp("settled"), SETTLED).start()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def net(settled: Net) -> Iterator[Net]:
    settled.clear_faults()
    yield settled
    settled.clear_faults()


def enroll_behind(coordinator: Coordinator, root: Path, proxy: FaultProxy) -> AgentProcess:
    """A ``fedadamw-edge`` agent enrolled with the proxy as its coordinator address (kept
    in its ``agent.json``, so ``run`` connects through the proxy)."""
    agent = AgentProcess(coordinator, root, 0, 1)
    result = edge(
        "enroll",
        "--coordinator",
        proxy.address,
        "--enroll-address",
        coordinator.enroll_address,
        "--token",
        coordinator.token(),
        "--ca-cert",
        str(coordinator.data_dir / "tls" / "ca.pem"),
        "--state-dir",
        str(agent.state),
        "--label",
        agent.state.name,
    )
    if result.returncode != 0:
        raise RuntimeError(f"enrollment failed: {result.stderr}")
    return agent


class Lonely:
    """One ``fedadamw-edge run`` process, alone with a coordinator of its own (never
    selected: the cohort is 5), behind a proxy. Everything runs in a background thread
    while the other tests run: once the agent says it is connected, the proxy is cut for
    ``CUT`` seconds, then healed."""

    CUT = 20.0

    def __init__(self, root: Path) -> None:
        self.coordinator = Coordinator(root, SETTLED)
        self.root = root
        self.proxy: FaultProxy | None = None
        self.agent: AgentProcess | None = None
        self.metrics_port = free_port()
        self.cut_at: float | None = None
        self.healed_at: float | None = None
        self.back_at: float | None = None  # connected again after the heal
        self.connected_while_cut: bool | None = None  # what its metrics said, mid-cut
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.coordinator.start()
            self.proxy = FaultProxy(self.coordinator.address).start()
            self.agent = enroll_behind(self.coordinator, self.root, self.proxy)
            self.agent.start("--metrics-port", str(self.metrics_port))
            self.wait_connected(since=0.0, timeout=90)
            self.cut_at = time.monotonic()
            self.proxy.cut()
            time.sleep(self.CUT / 2)
            self.connected_while_cut = self.connected()
            time.sleep(self.CUT / 2)
            self.proxy.heal()
            self.healed_at = time.monotonic()
            self.back_at = self.wait_connected(since=self.healed_at, timeout=90)
        except BaseException as exc:  # reported by the test that joins the thread
            self.error = exc

    def connected(self) -> bool:
        try:
            values = scrape(self.metrics_port)
        except OSError:
            return False
        return metric(values, "fedadamw_agent_connected") == 1

    def wait_connected(self, *, since: float, timeout: float) -> float:
        """Wait until the agent says it is connected and the proxy forwarded a connection
        after ``since``; returns when."""
        assert self.proxy is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected() and self.proxy.attempts_between(since, time.monotonic()):
                return time.monotonic()
            time.sleep(0.5)
        log = self.agent.log() if self.agent else ""
        raise TimeoutError(f"the agent did not connect through the proxy:\n{log[-3000:]}")

    def close(self) -> None:
        self.thread.join(timeout=180)
        if self.agent is not None:
            self.agent.stop()
        if self.proxy is not None:
            self.proxy.close()
        self.coordinator.stop()


@pytest.fixture(scope="module", autouse=True)
def report_table(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module: the fault × phase table of what the tests observed, on the
    terminal (and in ``$FAULTS_TABLE``, if set)."""
    yield
    if not OBSERVED:
        return
    text = table(OBSERVED)
    for row in OBSERVED:
        matrix.record("network", row.fault, row.phase, row.outcome, row.detail)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("\n" + text)
    if path := os.environ.get("FAULTS_TABLE"):
        Path(path).write_text(text + "\n")


@dataclass
class Background:
    """What the module starts with its first test, to run alongside the others: the
    ``PAST`` coordinator and its agents (their test comes later), and ``Lonely``."""

    past: Net
    lonely: Lonely


@pytest.fixture(scope="module", autouse=True)
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    started = Background(
        past=Net(tmp_path_factory.mktemp("past"), PAST),
        lonely=Lonely(tmp_path_factory.mktemp("lonely")),
    )
    started.past.start_in_background()
    started.lonely.thread.start()
    try:
        yield started
    finally:

        def close_past() -> None:
            with contextlib.suppress(BaseException):
                started.past.ready()
            started.past.close()

        closing = [
            threading.Thread(target=close_past),
            threading.Thread(target=started.lonely.close),
        ]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(timeout=240)


@pytest.fixture
def past(background: Background) -> Net:
    return background.past.ready()


@pytest.fixture
def lonely(background: Background) -> Lonely:
    return background.lonely


# --- the cases -------------------------------------------------------------------------------


def test_latency_each_way_and_a_slow_link_rounds_commit(net: Net) -> None:
    """150 ms each way on every agent's link for the whole round, and agent 0's link also
    limited to 256 KiB/s: the round commits the exact mean, and nobody resends anything."""
    for proxy in net.proxies:
        proxy.set_latency(up=0.15, down=0.15)
    net.proxies[0].set_bandwidth(256 * 1024)
    mark = Mark.now(net)
    before = [p.stats() for p in net.proxies]

    async def scenario() -> tuple[list[RoundResult], list[Update]]:
        async with net.agents() as agents:
            updates = [Update(i) for i in range(COHORT)]
            results, _ = await one_round(agents, updates)
        return results, updates

    results, updates = asyncio.run(scenario())
    assert outcomes(results) == [Outcome.COMMITTED] * COHORT, results
    [round_] = since(net, mark, [updates])
    values = net.assert_healthy()
    assert (round_["outcome"], round_["survivors"], round_["dropouts"]) == ("committed", 5, {})
    after = [p.stats() for p in net.proxies]
    for b, a in zip(before, after, strict=True):
        assert a.connections == b.connections + 1, a  # one connection, never lost
        assert a.bytes_down > b.bytes_down
        assert a.bytes_up > b.bytes_up
    # one upload stream and one status call each: latency alone makes nobody resend
    streams = delta(
        values, mark.metrics, "fedadamw_grpc_requests_total", method="UploadMaskedInput"
    )
    assert streams == COHORT
    OBSERVED.append(Row("latency 150 ms each way", "whole round", "committed 5/5", "no resends"))
    OBSERVED.append(Row("+ 256 KiB/s on one link", "whole round", "committed 5/5", "no resends"))


def test_resets_and_stalls_during_the_upload_resume_from_acknowledged_chunks(net: Net) -> None:
    """While they upload their masked inputs: agent 0's connection is reset after every
    128 KiB it sends (4 times); agent 1's stalls 0.5 s every 48 KiB it sends and is reset at
    random (5 % a chunk); agent 2's is reset in the other direction, losing what the
    coordinator answered (3 times). Each resumes from the chunks the coordinator says are
    durable: the round commits the exact mean, every chunk is received once, nobody resends
    an acknowledged chunk, and nobody sends many times its input."""
    losses = {
        0: Loss(direction="up", reset_every_bytes=128 * 1024, max_resets=4),
        1: Loss(
            direction="up", stall_every_bytes=48 * 1024, stall_seconds=0.5, reset_rate=0.05, seed=3
        ),
        2: Loss(direction="down", reset_every_bytes=400, max_resets=3),
    }

    def arm(i: int) -> dict[str, Any]:
        proxy = net.proxies[i]
        return {
            "phase": pb.PHASE_MASKED_INPUT,
            "before": lambda: proxy.set_loss(losses[i]),
            "after": lambda: proxy.set_loss(None),
        }

    mark = Mark.now(net)
    before = [p.stats() for p in net.proxies]

    async def scenario() -> tuple[list[RoundResult], list[RoundSession], list[Update]]:
        async with net.agents() as agents:
            updates = [Update(10 + i) for i in range(COHORT)]
            results, sessions = await one_round(agents, updates, {i: arm(i) for i in losses})
        return results, sessions, updates

    results, sessions, updates = asyncio.run(scenario())
    assert outcomes(results) == [Outcome.COMMITTED] * COHORT, results
    [round_] = since(net, mark, [updates])
    assert (round_["outcome"], round_["survivors"], round_["dropouts"]) == ("committed", 5, {})
    values = net.assert_healthy()
    resets = [
        p.stats().loss_resets - b.loss_resets for p, b in zip(net.proxies, before, strict=True)
    ]
    stalls = net.proxies[1].stats().stalls - before[1].stalls
    faulted = [s for s in sessions if isinstance(s, FaultSession)]
    assert len(faulted) == len(losses)
    vector = faulted[0].vector_bytes
    assert vector > 128 * 1024
    assert resets[0] >= 2, resets  # the faults happened
    assert resets[2] >= 1, resets
    assert stalls >= 2, stalls
    for session in faulted:
        streams = session.recorder.streams
        chunks = sorted({i for stream in streams for i in stream})
        assert chunks == list(range(len(chunks)))  # all of it went up
        # before each stream it asked what was durable, and resent none of that
        uploads = session.recorder.uploads
        assert all(
            isinstance(uploads[i - 1], set) for i, u in enumerate(uploads) if isinstance(u, list)
        )
        assert session.recorder.resent_acknowledged() == [], uploads
        # resent: only what was in flight at each reset; not many times the input
        assert session.uploaded_bytes < 3 * vector, (session.uploaded_bytes, vector, streams)
    assert len(faulted[0].recorder.streams) >= 2, faulted[0].recorder.streams
    # each chunk stored and counted once, however often it was sent
    received = delta(values, mark.metrics, "fedadamw_received_bytes_total", kind="masked_input")
    assert received == COHORT * vector
    starts = [[stream[0] for stream in s.recorder.streams if stream] for s in faulted]
    sent = [s.uploaded_bytes / vector for s in faulted]
    cases = [
        ("reset every 128 KiB up", f"{resets[0]} resets"),
        ("0.5 s stall every 48 KiB up, 5 % resets", f"{stalls} stalls, {resets[1]} resets"),
        ("reset every 400 B down (answers lost)", f"{resets[2]} resets"),
    ]
    for (fault, what), first, ratio in zip(cases, starts, sent, strict=True):
        detail = f"{what}; streams started at chunks {first} of {len(chunks)}; sent {ratio:.2f}x"
        OBSERVED.append(Row(fault, "masked_input", "committed 5/5", detail))


def test_an_upload_that_progresses_between_resets_resumes_at_once(net: Net) -> None:
    """Agent 0's connection is reset after every 128 KiB it uploads (5 times), and every
    resumed stream gets more chunks acknowledged. Each reset after progress should be
    retried after the round policy's shortest wait (at most 0.3 s), as ``Retrier.reset``
    promises "after progress"; only failures in a row without progress should wait longer."""
    loss = Loss(direction="up", reset_every_bytes=128 * 1024, max_resets=5)
    proxy = net.proxies[0]
    fault = {
        "phase": pb.PHASE_MASKED_INPUT,
        "before": lambda: proxy.set_loss(loss),
        "after": lambda: proxy.set_loss(None),
    }
    mark = Mark.now(net)

    async def scenario() -> tuple[list[RoundResult], list[RoundSession], list[Update]]:
        async with net.agents() as agents:
            updates = [Update(20 + i) for i in range(COHORT)]
            results, sessions = await one_round(agents, updates, {0: fault})
        return results, sessions, updates

    results, sessions, updates = asyncio.run(scenario())
    assert outcomes(results) == [Outcome.COMMITTED] * COHORT, results
    since(net, mark, [updates])
    net.assert_healthy()
    session = sessions[0]
    assert isinstance(session, FaultSession)
    durable = [len(u) for u in session.recorder.uploads if isinstance(u, set)]
    waits = session.upload_sleeps
    assert len(waits) == len(durable) - 1 >= 3, (waits, durable)  # a wait before each retry
    # wait k comes before status k + 1: after progress when status k grew over status k - 1
    after_progress = [waits[k] for k in range(1, len(waits)) if durable[k] > durable[k - 1]]
    assert after_progress, durable
    OBSERVED.append(
        Row(
            "reset every 128 KiB up (x5), progress each time",
            "masked_input",
            "committed 5/5",
            f"durable chunks at each resume {durable}; waits asked "
            f"{', '.join(f'{w:.2f}' for w in waits)} s",
        )
    )
    assert max(after_progress) <= ROUND.ceiling(0), (waits, durable)


SHORT_CUT = 2.0  # seconds; well inside every phase deadline of SETTLED


def test_a_short_cut_in_each_phase_is_ridden_out(net: Net) -> None:
    """Agent 0's link is cut (live connections reset, new ones refused) for 2 s right
    before it sends its message for each phase in turn, one round per phase; then, in one
    more round, every agent's link at once as agent 0 starts its upload (the coordinator's
    network goes away). They reconnect, send their messages after the heal, stay in, and
    every round commits with all five."""
    proxy = net.proxies[0]
    mark = Mark.now(net)
    before = [p.stats() for p in net.proxies]

    def cut_all() -> None:
        for each in net.proxies:
            each.cut_for(SHORT_CUT)

    async def scenario() -> tuple[list[list[Update]], list[RoundSession]]:
        contributions, faulted = [], []
        async with net.agents() as agents:
            for r, (phase, name) in enumerate(PHASES):
                updates = [Update(100 * r + i) for i in range(COHORT)]
                fault = {"phase": phase, "before": lambda: proxy.cut_for(SHORT_CUT)}
                results, sessions = await one_round(agents, updates, {0: fault})
                assert outcomes(results) == [Outcome.COMMITTED] * COHORT, (name, results)
                faulted.append(sessions[0])
                contributions.append(updates)
            updates = [Update(900 + i) for i in range(COHORT)]
            fault = {"phase": pb.PHASE_MASKED_INPUT, "before": cut_all}
            results, sessions = await one_round(agents, updates, {0: fault})
            assert outcomes(results) == [Outcome.COMMITTED] * COHORT, ("all cut", results)
            faulted.append(sessions[0])
            contributions.append(updates)
        return contributions, faulted

    contributions, faulted = asyncio.run(scenario())
    rounds = since(net, mark, contributions)
    net.assert_healthy()
    assert [(r["outcome"], r["survivors"], r["dropouts"]) for r in rounds] == [
        ("committed", COHORT, {})
    ] * (len(PHASES) + 1)
    stats = proxy.stats()
    assert stats.cut_resets - before[0].cut_resets >= len(PHASES), stats
    assert stats.refused > before[0].refused, stats  # it tried while cut, and was refused
    # in the last round every link was cut with its connection live, and came back
    for other, then in zip(net.proxies[1:], before[1:], strict=True):
        assert other.stats().cut_resets == then.cut_resets + 1, other.stats()
        assert other.stats().connections > then.connections + 1, other.stats()
    names = [name for _, name in PHASES] + ["masked_input"]
    faults = [f"cut {SHORT_CUT:.0f} s (< deadline)"] * len(PHASES) + [
        f"all five links cut {SHORT_CUT:.0f} s"
    ]
    for name, fault, session in zip(names, faults, faulted, strict=True):
        assert isinstance(session, FaultSession)
        assert session.fired_at is not None, name
        assert session.sent_at is not None, name
        took = session.sent_at - session.fired_at
        assert took >= SHORT_CUT, (name, took)  # the message went through after the heal
        OBSERVED.append(
            Row(
                fault,
                name,
                "committed 5/5",
                f"agent 0's message went through {took:.1f} s after the cut",
            )
        )


class CutUntilDropped:
    """A ``FaultSession`` ``before``: cut ``proxy`` now, and heal it only once the
    coordinator has counted one more dropout, i.e. the phase closed past its deadline
    without the agent behind it."""

    def __init__(self, net: Net, proxy: FaultProxy) -> None:
        self.net = net
        self.proxy = proxy
        self.cut_at: float | None = None
        self.healed_at: float | None = None
        self._healer: threading.Thread | None = None

    def __call__(self) -> None:
        dropouts = metric(self.net.metrics(), "fedadamw_round_dropouts_total")
        self.proxy.cut()
        self.cut_at = time.monotonic()
        self._healer = threading.Thread(target=self._heal_after, args=(dropouts,), daemon=True)
        self._healer.start()

    def _heal_after(self, dropouts: float) -> None:
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            if metric(self.net.metrics(), "fedadamw_round_dropouts_total") > dropouts:
                break
            time.sleep(0.2)
        self.proxy.heal()
        self.healed_at = time.monotonic()

    def join(self) -> None:
        if self._healer is not None:
            self._healer.join(timeout=90)


def test_a_cut_past_the_deadline_drops_the_agent_and_it_comes_back(past: Net) -> None:
    """Agent 0's link is cut right before it sends its message for each phase in turn, and
    healed only once the phase has closed without it, past its deadline: it is dropped
    there, and the round commits with the other four (and its input, when it was in
    already). In the next round it takes part again. While cut, it backs off."""
    net = past
    proxy = net.proxies[0]
    mark = Mark.now(net)

    async def scenario() -> tuple[list[list[Update]], list[list[RoundResult]], list[Any]]:
        contributions, results, faulted = [], [], []
        async with net.agents() as agents:
            for r, (phase, _) in enumerate(PHASES):
                updates = [Update(100 * r + i) for i in range(COHORT)]
                cut = CutUntilDropped(net, proxy)
                found, _ = await one_round(agents, updates, {0: {"phase": phase, "before": cut}})
                cut.join()
                results.append(found)
                faulted.append(cut)
                counted = phase >= pb.PHASE_CONSISTENCY_CHECK  # its input was in
                contributions.append(updates if counted else updates[1:])
            updates = [Update(1000 + i) for i in range(COHORT)]
            found, _ = await one_round(agents, updates)
            results.append(found)
            contributions.append(updates)
        return contributions, results, faulted

    contributions, results, faulted = asyncio.run(scenario())
    rounds = since(net, mark, contributions)
    values = net.assert_healthy()
    log = net.coordinator.log()
    for (_, name), found in zip(PHASES, results, strict=False):
        assert found[0].outcome is Outcome.DROPPED, (name, found[0])
        assert outcomes(found[1:]) == [Outcome.COMMITTED] * (COHORT - 1), (name, found)
    assert outcomes(results[-1]) == [Outcome.COMMITTED] * COHORT, results[-1]  # it is back
    assert [r["outcome"] for r in rounds] == ["committed"] * (len(PHASES) + 1)
    assert [r["survivors"] for r in rounds] == [4, 4, 4, 5, 5, 5]
    assert [r["cohort"] for r in rounds] == [COHORT] * (len(PHASES) + 1)  # it was back each time
    assert [r["dropouts"] for r in rounds] == [{name: 1} for _, name in PHASES] + [{}]
    assert delta(values, mark.metrics, "fedadamw_round_dropouts_total") == len(PHASES)
    reasons = {
        name: sorted(
            key.split('reason="')[1].split('"')[0]
            for key, value in values.items()
            if key.startswith("fedadamw_round_dropouts_total{")
            and f'phase="{name}"' in key
            and value
        )
        for _, name in PHASES
    }
    assert all(len(found) == 1 for found in reasons.values()), reasons
    # the log says where each phase lost it (an unmasking dropout shows in the status only)
    closed_without = re.findall(r"round \d+: (\w+) closed \(\d+ alive, 1 dropped\)", log)
    assert closed_without == [name for _, name in PHASES[:-1]], closed_without
    for (_, name), cut, found, round_ in zip(PHASES, faulted, results, rounds, strict=False):
        assert cut.cut_at is not None
        assert cut.healed_at is not None
        seconds = cut.healed_at - cut.cut_at
        assert seconds < 30, (name, seconds)  # the phase did close without it
        attempts = net.proxies[0].attempts_between(cut.cut_at, cut.healed_at)
        # backoff, not a hot loop: under one connection attempt a second while cut
        assert attempts <= 0.75 * seconds + 2, (name, attempts, seconds)
        OBSERVED.append(
            Row(
                f"cut until the phase closed ({seconds:.1f} s, deadline "
                f"{PAST['deadlines'][name]} s)",
                name,
                f"dropped ({reasons[name][0]}); committed {round_['survivors']}/5; "
                "in the next round again",
                f"{attempts} connection attempts while cut; the agent saw "
                f"{found[0].reason.split(':')[0]}",
            )
        )


@pytest.mark.parametrize(
    ("phase", "name"), [PHASES[0], PHASES[-1]], ids=["advertise_keys", "unmasking"]
)
def test_an_answer_lost_as_the_phase_closes_does_not_drop_the_agent(
    past: Net, phase: int, name: str
) -> None:
    """Agent 0 sends its message for the phase last (the others are done), so the
    coordinator closes the phase as soon as it has stored it; the answer is lost, the
    connection reset (the first bytes back after the message). The agent sends the message
    again after the reconnection, and should stay in the round and see it commit."""
    net = past
    proxy = net.proxies[0]
    lose_answer = Loss(direction="down", reset_every_bytes=1, max_resets=1)
    fault = {
        "phase": phase,
        "wait": 1.5,  # the others have sent theirs (and the downloads are done)
        "before": lambda: proxy.set_loss(lose_answer),
        "after": lambda: proxy.set_loss(None),
    }
    mark = Mark.now(net)
    resets = proxy.stats().loss_resets

    async def scenario() -> tuple[list[RoundResult], list[Update]]:
        async with net.agents() as agents:
            updates = [Update(2000 + i) for i in range(COHORT)]
            results, _ = await one_round(agents, updates, {0: fault})
        proxy.set_loss(None)
        return results, updates

    results, updates = asyncio.run(scenario())
    assert outcomes(results[1:]) == [Outcome.COMMITTED] * (COHORT - 1), results
    [round_] = since(net, mark, [updates])
    net.assert_healthy()
    assert proxy.stats().loss_resets == resets + 1  # the answer was lost
    OBSERVED.append(
        Row(
            "answer to its last message lost (reset) as the phase closes",
            name,
            f"committed {round_['survivors']}/5; agent 0: {results[0].outcome.value}",
            f"it sent the message again and stayed in; dropouts {round_['dropouts'] or 'none'}",
        )
    )
    assert results[0].outcome is Outcome.COMMITTED, results[0]


def test_a_cut_agent_backs_off_and_reconnects_after_the_heal(lonely: Lonely) -> None:
    """A real ``fedadamw-edge run`` agent, connected and checking in, loses its link for
    20 s: it retries with growing waits (a handful of connection attempts, not a hot loop),
    says it is disconnected, and after the heal it reconnects and checks in again."""
    lonely.thread.join(timeout=240)
    assert not lonely.thread.is_alive(), "the agent never came back"
    if lonely.error is not None:
        raise lonely.error
    assert lonely.proxy is not None
    assert lonely.agent is not None
    assert lonely.cut_at is not None
    assert lonely.healed_at is not None
    assert lonely.back_at is not None
    attempts = lonely.proxy.attempts_between(lonely.cut_at, lonely.healed_at)
    assert lonely.agent.running
    log = lonely.agent.log()
    retries = [
        float(m)
        for m in re.findall(
            r"check-in at \S+: coordinator unreachable .*?; retrying in ([\d.]+)s", log
        )
    ]
    assert 2 <= attempts < 15, attempts
    assert lonely.connected_while_cut is False  # its fedadamw_agent_connected said so
    assert retries, log[-3000:]
    assert max(retries) > 2 * min(retries), retries  # the waits grow
    OBSERVED.append(
        Row(
            f"cut {Lonely.CUT:.0f} s, agent idle (checking in)",
            "check-in",
            "reconnected",
            f"{attempts} connection attempts while cut; check-in waits "
            f"{', '.join(f'{r:.1f}' for r in retries)} s; checked in again "
            f"{lonely.back_at - lonely.healed_at:.0f} s "
            "after the heal",
        )
    )

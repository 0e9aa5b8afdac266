"""Real processes on loopback: a coordinator started with its CLI, and test agents.

``Coordinator`` runs ``fedadamw-coordinator run`` in a subprocess on free ports with a
fresh data directory (SQLite, or a PostgreSQL schema of its own), real TLS and mutual TLS.
``TestAgent`` enrolls with a token from ``fedadamw-coordinator token create`` and takes
part in rounds through the agent's own ``RoundSession`` (generated stubs and the real
``secure_agg`` client), uploading whatever vectors the test computes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_client.enrollment import Credentials, enroll, mutual_tls_channel
from edge_client.session import Outcome, RoundResult, RoundSession, UpdateFn
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

BIN = Path(sys.executable).parent
PG_URL = os.environ.get("FEDADAMW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

FAST = {
    "rounds": 1,
    "cohort": 4,
    "min_clients": 3,
    "over_selection": 0.0,
    "local_steps": 2,
    "lr": 0.01,
    "schedule": "constant",
    "deadlines": {
        "selection": 2,
        "advertise_keys": 10,
        "share_keys": 10,
        "masked_input": 20,
        "consistency_check": 10,
        "unmasking": 10,
        "restart_grace": 30,
    },
    "limits": {"chunk_elements": 4096, "checkin_wait": 2, "rate_per_second": 1000},
}


# Below Linux's ephemeral range (32768-60999): a port the kernel picks for bind(0) or for an
# outgoing connection comes from that range, so between this check and the process's own
# bind, another test's connection could take it (seen in CI: a coordinator's metrics port).
_PORTS = (20_000, 32_767)


def _port_slice() -> tuple[int, int]:
    """This process's own part of ``_PORTS``: each pytest-xdist worker gets a slice, so two
    workers never pick the same port between one's check and its coordinator's bind (seen
    in CI: two tests, one port)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    width = (_PORTS[1] - _PORTS[0] + 1) // max(1, count)
    low = _PORTS[0] + (index % max(1, count)) * width
    return low, low + width - 1


_SLICE = _port_slice()
# In turn from a random start: a port comes back only after the whole slice, long after the
# test that had it has ended, and never twice for one coordinator's ports.
_next_port = itertools.count(random.randrange(_SLICE[1] - _SLICE[0] + 1))


def free_port() -> int:
    """A loopback TCP port free now, outside the range the kernel hands out by itself, and
    inside this test worker's own slice of it."""
    low, high = _SLICE
    for _ in range(1000):
        port = low + next(_next_port) % (high - low + 1)
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high} after 1000 tries")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    lines = [f"{k} = {_toml(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for section, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def merged(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def postgres_url_for_schema(schema: str) -> str:
    """A URL whose connections use ``schema``; the schema is created if missing."""
    import psycopg

    base = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    separator = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{separator}options=-csearch_path%3D{schema}"


def drop_postgres_schema(schema: str) -> None:
    """Drop the schema. A drop can deadlock with a connection a test's coordinator left
    open (PostgreSQL then cancels one side), so the drop is tried again a few times."""
    import psycopg

    base = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    for attempt in range(5):
        try:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


class Coordinator:
    """``fedadamw-coordinator run`` in a subprocess."""

    def __init__(
        self,
        root: Path,
        settings: Mapping[str, Any],
        *,
        db_url: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.root = root
        self.insecure = insecure
        self.data_dir = root / "coordinator"
        self.config = write_config(root / "coordinator.toml", settings)
        self.db_url = db_url
        self.port = free_port()
        self.enroll_port = free_port()
        self.metrics_port = free_port()
        self.log_path = root / "coordinator.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def enroll_address(self) -> str:
        return f"127.0.0.1:{self.enroll_port}"

    @property
    def ca_pem(self) -> bytes:
        return (self.data_dir / "tls" / "ca.pem").read_bytes()

    def _db_args(self) -> list[str]:
        return ["--db", self.db_url] if self.db_url else []

    def start(self, *, timeout: float = 60.0) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(BIN / "fedadamw-coordinator"),
                "run",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                self.address,
                "--enroll-listen",
                self.enroll_address,
                "--metrics-port",
                str(self.metrics_port),
                "--config",
                str(self.config),
                *self._db_args(),
                *(["--insecure"] if self.insecure else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the coordinator exited {self.process.returncode}:\n{self.log()}"
                )
            ca = self.data_dir / "tls" / "ca.pem"
            if self.insecure and self._healthy(None):
                return
            if ca.exists() and self._healthy(ca.read_bytes()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the coordinator did not become healthy:\n{self.log()}")

    def _healthy(self, ca: bytes | None) -> bool:
        try:
            with (
                grpc.insecure_channel(self.enroll_address)
                if ca is None
                else grpc.secure_channel(
                    self.enroll_address, grpc.ssl_channel_credentials(root_certificates=ca)
                )
            ) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [
                str(BIN / "fedadamw-coordinator"),
                *args,
                "--data-dir",
                str(self.data_dir),
                *self._db_args(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"fedadamw-coordinator {' '.join(args)} failed: {result.stderr}")
        return result

    def token(self, ttl: str = "1h") -> str:
        return self.tokens(1, ttl)[0]

    def tokens(self, count: int, ttl: str = "1h") -> list[str]:
        out = self.cli("token", "create", "--ttl", ttl, "--count", str(count)).stdout
        return out.split()

    def status(self, limit: int = 50) -> dict[str, Any]:
        """What ``status --json`` prints, read in this process.

        Tests poll this several times a second; a ``status`` process costs about a second
        of CPU (its imports and the schema check), which on two cores slowed every other
        test. The tests of the command itself run it (``cli("status", "--json")``)."""
        from coordinator.status import status_report
        from coordinator.store.sql import SqlStore, default_sqlite_url

        store = SqlStore(self.db_url or default_sqlite_url(self.data_dir))
        try:
            report = status_report(store, limit=limit)  # 50: the command's default --limit
        finally:
            store.close()
        data: dict[str, Any] = json.loads(json.dumps(report))  # as the command prints it
        return data

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 120.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"status never matched; last: {json.dumps(status)[:2000]}\n{self.log()[-4000:]}"
                )
            time.sleep(0.3)


class TestAgent:
    """An enrolled agent that runs rounds with a test-chosen update."""

    __test__ = False  # not a pytest class

    def __init__(self, coordinator: Coordinator, credentials: Credentials, root: Path) -> None:
        self.coordinator = coordinator
        self.credentials = credentials
        self.cache = root / f"agent-{credentials.client_id}"
        self.channel = mutual_tls_channel(coordinator.address, credentials)
        self.stub = pb_grpc.EdgeServiceStub(self.channel)

    @classmethod
    async def enrolled(
        cls, coordinator: Coordinator, root: Path, *, token: str | None = None, label: str = ""
    ) -> TestAgent:
        credentials = await enroll(
            address=coordinator.enroll_address,
            ca_certificate_pem=coordinator.ca_pem,
            token=token or coordinator.token(),
            label=label or f"agent-{uuid.uuid4().hex[:6]}",
        )
        return cls(coordinator, credentials, root)

    @classmethod
    async def many(cls, coordinator: Coordinator, root: Path, count: int) -> list[TestAgent]:
        tokens = coordinator.tokens(count)
        return [await cls.enrolled(coordinator, root, token=t) for t in tokens]

    async def assignment(
        self, *, timeout: float = 60.0, task: str = "digits-cnn"
    ) -> pb.RoundAssignment:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                answer = await self.stub.CheckIn(
                    pb.CheckInRequest(task=task, wait_seconds=2), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.5)
                continue
            if answer.WhichOneof("answer") == "assignment":
                return answer.assignment
            await asyncio.sleep(min(answer.retry_after_seconds, 1))
        raise TimeoutError(f"agent {self.credentials.client_id} was never selected")

    def session(
        self,
        assignment: pb.RoundAssignment,
        compute: UpdateFn,
        cls: type[RoundSession] = RoundSession,
        **kwargs: Any,
    ) -> RoundSession:
        return cls(
            stub=self.stub,
            identity_key=self.credentials.identity_key,
            assignment=assignment,
            compute=compute,
            cache_dir=self.cache,
            **kwargs,
        )

    async def run_round(
        self, compute: UpdateFn, cls: type[RoundSession] = RoundSession, **kwargs: Any
    ) -> RoundResult:
        assignment = await self.assignment()
        return await self.session(assignment, compute, cls, **kwargs).run()

    async def close(self) -> None:
        await self.channel.close()


__all__ = [
    "FAST",
    "PG_URL",
    "AgentProcess",
    "Coordinator",
    "Outcome",
    "TestAgent",
    "drop_postgres_schema",
    "edge",
    "enrolled_agents",
    "free_port",
    "merged",
    "postgres_url_for_schema",
    "write_config",
]


class AgentProcess:
    """A ``fedadamw-edge`` agent: enrolled with the CLI, run as its own process."""

    def __init__(self, coordinator: Coordinator, root: Path, index: int, partitions: int) -> None:
        self.coordinator = coordinator
        self.state = root / f"edge-{index}"
        self.log_path = root / f"edge-{index}.log"
        self.partition = f"{index}/{partitions}"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra: tuple[str, ...] = ()

    def enroll(self, token: str) -> subprocess.CompletedProcess[str]:
        return edge(
            "enroll",
            "--coordinator",
            self.coordinator.address,
            "--enroll-address",
            self.coordinator.enroll_address,
            "--token",
            token,
            "--ca-cert",
            str(self.coordinator.data_dir / "tls" / "ca.pem"),
            "--state-dir",
            str(self.state),
            "--label",
            self.state.name,
        )

    def start(self, *extra: str) -> None:
        self.extra = extra or self.extra
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(BIN / "fedadamw-edge"),
                "run",
                "--state-dir",
                str(self.state),
                "--partition",
                self.partition,
                "--threads",
                "1",
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code (None if it was not running)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def edge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``fedadamw-edge ARGS`` as a subprocess."""
    return subprocess.run(
        [str(BIN / "fedadamw-edge"), *args], capture_output=True, text=True, timeout=timeout
    )


def enrolled_agents(coordinator: Coordinator, root: Path, count: int) -> list[AgentProcess]:
    agents = [AgentProcess(coordinator, root, i, count) for i in range(count)]
    for agent, token in zip(agents, coordinator.tokens(count), strict=True):
        result = agent.enroll(token)
        if result.returncode != 0:
            raise RuntimeError(f"enrollment failed: {result.stderr}")
    return agents


def postgres_schema_or_skip(schema: str) -> str:
    """``postgres_url_for_schema(schema)``; the test is skipped when PostgreSQL cannot be
    reached, and fails instead when ``CI=true`` (CI must run the PostgreSQL tests)."""
    import pytest

    try:
        return postgres_url_for_schema(schema)
    except Exception as exc:  # psycopg raises OperationalError subclasses
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and cannot be reached: {exc}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 cannot be reached: {exc}")

"""Assembling and running the coordinator service.

The data directory (mode 0700) holds everything a coordinator keeps::

    DIR/coordinator.db   the SQLite database (unless --db names PostgreSQL)
    DIR/blobs/           model versions, ΔG and v̄, by sha256
    DIR/spool/           masked inputs of the open round, until it ends
    DIR/tls/             the CA and the server certificate (made on first start)
    DIR/leader.lock      held by the leader (coordinator/leader.py), holder as JSON
    DIR/database.json    which database the service uses, without its password (written on
                         each start, read by the admin commands: coordinator/datadir.py)

Two listeners: ``listen`` serves agents over mutual TLS; ``enroll_listen`` serves only
enrollment, over server-authenticated TLS, because an agent has no certificate before it
enrolls (gRPC's TLS cannot ask for a client certificate without requiring one). Neither
uses ``SO_REUSEPORT``: a port another process holds is an error, never shared.

One leader: ``start`` first takes the leader lock of the data directory (and of the
PostgreSQL database), waiting as a standby while another process holds it, and only then
opens the store, binds ports and resumes rounds. ``run_until_signal`` ends the process with
``EXIT_LEADER_LOST`` if the lock is lost while serving, and with ``EXIT_DRIVER_DIED`` if the
round driver dies of an error it cannot handle. While the driver retries a store or blob
fault, the health service answers NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.auth import Authenticator
from coordinator.blobs import BlobStore, InputSpool
from coordinator.config import CoordinatorConfig
from coordinator.datadir import (
    DEFAULT_DB_WAIT_S,
    open_store,
    prepare_data_dir,
    record_database,
    while_unreachable,
)
from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.leader import EXIT_LEADER_LOST, LeaderLock, LeadershipError
from coordinator.metrics import Metrics
from coordinator.model_state import ModelState
from coordinator.pki import CertificateAuthority
from coordinator.round_machine import RoundMachine
from coordinator.service import EdgeService, add_to_server
from coordinator.store import Store
from fedadamw.algorithms import Algorithm, get_algorithm
from fedadamw.errors import FedAdamWError
from fedadamw.tasks import Task, load_task

__all__ = ["EXIT_DRIVER_DIED", "Coordinator", "ServeOptions"]

EXIT_DRIVER_DIED = 5
"""The exit code when the round driver dies of an error it cannot handle."""

log = logging.getLogger(__name__)

SERVICE_NAME = "fedadamw.v1.EdgeService"


@dataclass(frozen=True)
class ServeOptions:
    data_dir: Path
    listen: str = "127.0.0.1:7070"
    enroll_listen: str | None = None  # default: the listen host, port + 1
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    db_url: str | None = None
    insecure: bool = False
    server_names: tuple[str, ...] = ()
    standby_timeout: float | None = None  # seconds to wait as a standby; None: forever
    db_wait: float = DEFAULT_DB_WAIT_S  # seconds to retry an unreachable database at start-up


def _bind(add_port: Callable[..., int], address: str, *credentials: object) -> int:
    """``add_port(address, ...)``; a clear error if the address cannot be bound."""
    try:
        return add_port(address, *credentials)
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"cannot listen on {address}: the port is in use by another process, or the "
            "address is not one of this host's",
        ) from exc


async def _bounded(stopping: Awaitable[None], *, timeout: float) -> None:
    """Await ``stopping``, giving up (logged) after ``timeout`` seconds."""
    try:
        await asyncio.wait_for(stopping, timeout)
    except TimeoutError:
        log.error("stopping did not finish within %g s; exiting anyway", timeout)


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, f"expected HOST:PORT, got {address!r}")
    return host or "0.0.0.0", int(port)


class Coordinator:
    """A running coordinator: store, blobs, CA, round machine, gRPC server and metrics."""

    def __init__(self, config: CoordinatorConfig, options: ServeOptions) -> None:
        self.config = config
        self.options = options
        self.metrics = Metrics()
        self.store: Store | None = None
        self.server: grpc.aio.Server | None = None
        self.machine: RoundMachine | None = None
        self.leader: LeaderLock | None = None
        self.ports: dict[str, int] = {}
        self.driver_died = asyncio.Event()  # the round driver hit an error it cannot handle
        self._tasks: set[asyncio.Task[None]] = set()
        self._loaded: tuple[Task, Algorithm] | None = None

    def _task_and_algorithm(self) -> tuple[Task, Algorithm]:
        """The configured task and algorithm (``INVALID_ARGUMENT`` if unknown)."""
        if self._loaded is None:
            try:
                self._loaded = load_task(self.config.task), get_algorithm(self.config.algorithm)
            except FedAdamWError as exc:
                raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, str(exc)) from exc
        return self._loaded

    async def become_leader(self) -> None:
        """Return once this process holds the leader lock, waiting as a standby meanwhile.

        Raises ``StandbyTimeoutError`` after ``options.standby_timeout`` seconds, and
        ``STORE_UNAVAILABLE`` if PostgreSQL cannot be reached within ``options.db_wait``.
        """
        if self.leader is None:
            self.leader = LeaderLock(prepare_data_dir(self.options.data_dir), self.options.db_url)
        leader = self.leader
        await while_unreachable(
            lambda: leader.acquire(timeout=self.options.standby_timeout),
            wait=self.options.db_wait,
        )

    async def start(self) -> None:
        options, config = self.options, self.config
        data_dir = prepare_data_dir(options.data_dir)
        task, algorithm = self._task_and_algorithm()
        await self.become_leader()  # before the store, the directory's files and the ports
        # A database still starting (a boot, a failover) is waited for: architecture.md §5.
        self.store = await while_unreachable(
            lambda: asyncio.to_thread(open_store, data_dir, options.db_url, create=True),
            wait=options.db_wait,
        )
        await asyncio.to_thread(record_database, data_dir, options.db_url)
        blobs = BlobStore(data_dir / "blobs")
        await asyncio.to_thread(blobs.sweep_temporary)
        spool = InputSpool(data_dir / "spool")
        model = await asyncio.to_thread(
            ModelState, task=task, algorithm=algorithm, blobs=blobs, seed=config.seed
        )
        ca = (
            None
            if options.insecure
            else await asyncio.to_thread(
                CertificateAuthority.load_or_create,
                data_dir / "tls",
                server_names=options.server_names,
            )
        )
        self.machine = RoundMachine(
            store=self.store,
            blobs=blobs,
            spool=spool,
            model=model,
            config=config,
            metrics=self.metrics,
        )
        limit = config.limits.chunk_elements * 8 + (1 << 16)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 4 << 20),
                ("grpc.keepalive_permit_without_calls", 1),
                # Fixed HTTP/2 windows: with bandwidth probing, each upload stream's window
                # grows to megabytes that gRPC reads ahead of the service, per client.
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                # A port another process holds is an error, never shared between processes.
                ("grpc.so_reuseport", 0),
            ]
        )
        service = EdgeService(
            machine=self.machine,
            store=self.store,
            blobs=blobs,
            ca=ca,
            auth=Authenticator(
                store=self.store,
                insecure=options.insecure,
                rate_per_second=config.limits.rate_per_second,
            ),
            metrics=self.metrics,
            checkin_wait=config.limits.checkin_wait,
            concurrent_uploads=config.limits.concurrent_uploads,
        )
        add_to_server(service, self.server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        host, port = _split(options.listen)
        enroll = options.enroll_listen or f"{host}:{port + 1 if port else 0}"
        if ca is None:
            log.warning(
                "RUNNING WITHOUT TLS (--insecure): anyone on the network can read and forge "
                "traffic and claim any client id. Use this on loopback for development only."
            )
            self.ports["listen"] = _bind(self.server.add_insecure_port, options.listen)
            self.ports["enroll"] = _bind(self.server.add_insecure_port, enroll)
        else:
            mutual = grpc.ssl_server_credentials(
                [(ca.server_key_pem, ca.server_certificate_pem)],
                root_certificates=ca.ca_certificate_pem,
                require_client_auth=True,
            )
            server_only = grpc.ssl_server_credentials(
                [(ca.server_key_pem, ca.server_certificate_pem)]
            )
            self.ports["listen"] = _bind(self.server.add_secure_port, options.listen, mutual)
            self.ports["enroll"] = _bind(self.server.add_secure_port, enroll, server_only)
        machine = self.machine

        async def publish_health() -> None:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if machine.serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in (SERVICE_NAME, ""):
                await health_servicer.set(name, status)

        loop = asyncio.get_running_loop()
        # While the driver retries a fault it makes no progress: say so on the health service.
        machine.on_health = lambda _serving: self._keep(loop.create_task(publish_health()))
        machine.on_fatal = lambda _exc: self.driver_died.set()
        # The ports are bound (not yet served): resume or start rounds, then serve.
        await machine.start()
        await self.server.start()
        await publish_health()
        if options.metrics_port is not None:
            address = f"{options.metrics_host}:{options.metrics_port}"
            try:
                self.ports["metrics"] = self.metrics.serve(
                    options.metrics_port, options.metrics_host
                )
            except OSError as exc:
                raise CoordinatorError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"cannot serve /metrics on {address}: {exc.strerror or exc} (the port is in "
                    "use by another process, or the address is not one of this host's)",
                ) from exc
        log.info(
            "coordinator serving task %s (%s): agents on %s:%d, enrollment on %s:%d%s",
            config.task,
            config.algorithm,
            host,
            self.ports["listen"],
            host,
            self.ports["enroll"],
            f", metrics on :{self.ports['metrics']}/metrics" if "metrics" in self.ports else "",
        )

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a reference to a fire-and-forget task until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, grace: float = 5.0) -> None:
        try:
            if self.server is not None:
                await self.server.stop(grace)
            if self.machine is not None:
                await self.machine.stop()
            self.metrics.close()
            if self.store is not None:
                self.store.close()
        finally:
            if self.leader is not None:
                await self.leader.release()

    async def run_until_signal(self) -> int:
        """Serve until SIGTERM or SIGINT, then stop gracefully; the process's exit code.

        While another process leads, wait as a standby (a signal ends the wait: 0). Returns
        ``StandbyTimeoutError.exit_code`` (3) if ``standby_timeout`` runs out, and
        ``EXIT_LEADER_LOST`` (4) after stopping if the leader lock is lost while serving.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self._task_and_algorithm()  # a bad --task fails now, not after waiting as a standby
        stopping = asyncio.ensure_future(stop.wait())
        try:
            waiting = asyncio.ensure_future(self.become_leader())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
                log.info("stopped while waiting as a standby")
                return 0
            try:
                waiting.result()
            except LeadershipError as exc:
                log.error("%s", exc)
                return exc.exit_code
            assert self.leader is not None
            lost = asyncio.ensure_future(self.leader.lost.wait())
            died = asyncio.ensure_future(self.driver_died.wait())
            leader_lost = False
            try:
                await self.start()
                await asyncio.wait({stopping, lost, died}, return_when=asyncio.FIRST_COMPLETED)
                leader_lost = self.leader.lost.is_set()
                if self.driver_died.is_set() and not leader_lost:
                    log.error(
                        "stopping, exit code %d: the round driver died (logged above); "
                        "its supervisor should start the coordinator again",
                        EXIT_DRIVER_DIED,
                    )
                    return EXIT_DRIVER_DIED
                if leader_lost:
                    log.error(
                        "stopping at once, exit code %d: this process is no longer the leader "
                        "(%s); its supervisor should start it again",
                        EXIT_LEADER_LOST,
                        self.leader.lost_reason,
                    )
                    return EXIT_LEADER_LOST
                log.info("stopping")
                return 0
            finally:
                lost.cancel()
                died.cancel()
                if leader_lost:  # another process may lead already: no grace
                    await _bounded(self.stop(grace=0), timeout=15)
                else:
                    await self.stop()
        finally:
            stopping.cancel()

"""A byte-level TCP proxy whose faults a test turns on and off while traffic flows.

``FaultProxy(target)`` listens on 127.0.0.1 (a free port unless told) and forwards every
connection to ``target`` byte for byte, in both directions. It never looks inside the
bytes, so TLS passes through untouched: an agent that connects to the proxy still checks
the coordinator's certificate, whose names (localhost, 127.0.0.1, ::1) say nothing about
the port. "Up" is client → target (an agent's calls and uploads), "down" is target →
client.

The controls, each safe to call from any thread while connections are live:

- ``set_latency(up=, down=)``: every chunk is delivered that many seconds after the proxy
  read it; chunks are pipelined, so latency does not lower throughput;
- ``set_bandwidth(bytes_per_second)``: each direction of each connection forwards at most
  that rate (None: unlimited);
- ``set_loss(Loss(...))``: TCP retransmits a lost segment, so what loss does to a TCP
  stream is a *stall* (the chunk, and everything behind it, waits) or, when it goes on, a
  *reset* connection. ``Loss`` gives per-chunk probabilities (a seeded RNG) or
  deterministic byte periods for both, in one direction or both;
- ``cut()``: reset (RST) every live connection and answer every new one with RST, until
  ``heal()``; ``cut_for(seconds)`` heals by itself;
- ``stats()``: bytes forwarded each way, connections forwarded, attempts refused, resets
  and stalls the proxy caused; ``attempts_between(start, end)`` counts connection
  attempts (forwarded or refused) by ``time.monotonic()`` times.

A chunk is one read from a socket, at most ``CHUNK_BYTES``. The proxy runs its own
asyncio loop in a daemon thread, so it works alongside a test's own event loop or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = ["CHUNK_BYTES", "Direction", "FaultProxy", "Loss", "Stats"]

CHUNK_BYTES = 16 * 1024
"""The largest read the proxy forwards as one chunk (one TLS record's worth)."""

Direction = Literal["up", "down", "both"]
T = TypeVar("T")


@dataclass(frozen=True)
class Loss:
    """What "packet loss" does to the TCP streams of one direction (or both).

    Rates are per chunk; ``*_every_bytes`` fire each time that many bytes (counted over
    all connections, while this loss is set) have gone through, which makes a fault
    certain to happen in a test. ``max_resets`` stops resetting after that many.
    """

    direction: Direction = "up"
    reset_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 1.0
    reset_every_bytes: int | None = None
    stall_every_bytes: int | None = None
    max_resets: int | None = None
    seed: int = 0

    def applies(self, direction: Literal["up", "down"]) -> bool:
        return self.direction in ("both", direction)


@dataclass(frozen=True)
class Stats:
    """Counters since the proxy started."""

    bytes_up: int
    bytes_down: int
    connections: int
    """Connections accepted and forwarded to the target."""
    refused: int
    """Connection attempts answered with RST because the proxy was cut."""
    upstream_failures: int
    """Connections reset because the target could not be reached."""
    cut_resets: int
    """Live connections reset by ``cut()``."""
    loss_resets: int
    """Connections reset by ``Loss``."""
    stalls: int
    live: int

    @property
    def attempts(self) -> int:
        return self.connections + self.refused + self.upstream_failures


@dataclass
class _Counters:
    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    refused: int = 0
    upstream_failures: int = 0
    cut_resets: int = 0
    loss_resets: int = 0
    stalls: int = 0
    attempt_times: list[float] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with RST: SO_LINGER 0, then abort (no FIN, no flush)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client's streams and the target's."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client = client
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []
        self.dead = False

    def reset(self) -> None:
        if self.dead:
            return
        self.dead = True
        _reset(self.client[1])
        _reset(self.server[1])
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class FaultProxy:
    """A TCP proxy 127.0.0.1:``port`` → ``target`` (HOST:PORT); see the module docstring."""

    def __init__(self, target: str, *, port: int = 0, seed: int = 0) -> None:
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        self._port = port
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._latency = {"up": 0.0, "down": 0.0}
        self._bandwidth: float | None = None
        self._loss: Loss | None = None
        self._loss_rng = random.Random(seed)
        self._loss_bytes = 0
        self._stall_bytes = 0
        self._loss_resets_now = 0
        self._cut = False
        self._heal_timer: asyncio.TimerHandle | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.events: list[tuple[float, str]] = []
        """``(time.monotonic(), what)`` for each cut, heal and loss change."""
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # --- life -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._run(self._listen())
        return self

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.start_server(self._accept, "127.0.0.1", self._port)
        self._port = int(server.sockets[0].getsockname()[1])
        return server

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        # the handlers end once their links are reset; cancelling them would make
        # asyncio's stream callback log the cancellation as an error
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._port}"

    # --- controls ---------------------------------------------------------------------

    def set_latency(self, *, up: float = 0.0, down: float = 0.0) -> None:
        """Delay each chunk by ``up`` / ``down`` seconds in that direction."""
        with self._lock:
            self._latency = {"up": up, "down": down}
            self._event(f"latency up {up:.3f}s down {down:.3f}s")

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        with self._lock:
            self._bandwidth = bytes_per_second
            self._event(f"bandwidth {bytes_per_second}")

    def set_loss(self, loss: Loss | None) -> None:
        """Turn loss on (or off with None); its byte periods start counting now."""
        with self._lock:
            self._loss = loss
            self._loss_bytes = 0
            self._stall_bytes = 0
            self._loss_resets_now = 0
            if loss is not None:
                self._loss_rng = random.Random(loss.seed)
            self._event(f"loss {loss}")

    def cut(self) -> None:
        """Reset every live connection; answer new ones with RST until ``heal``."""
        self._run(self._cut_now())

    def heal(self) -> None:
        self._loop.call_soon_threadsafe(self._heal_now)
        self._run(asyncio.sleep(0))

    def cut_for(self, seconds: float) -> None:
        """``cut`` now; ``heal`` after ``seconds`` (returns at once)."""

        async def cut_then_schedule() -> None:
            await self._cut_now()
            self._heal_timer = self._loop.call_later(seconds, self._heal_now)

        self._run(cut_then_schedule())

    @property
    def is_cut(self) -> bool:
        return self._cut

    async def _cut_now(self) -> None:
        with self._lock:
            self._cut = True
            self._event("cut")
            links = list(self._links)
            self._counters.cut_resets += len(links)
        for link in links:
            link.reset()

    def _heal_now(self) -> None:
        if self._heal_timer is not None:
            self._heal_timer.cancel()
            self._heal_timer = None
        with self._lock:
            self._cut = False
            self._event("heal")

    def _event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    # --- counters ---------------------------------------------------------------------

    def stats(self) -> Stats:
        with self._lock:
            c = self._counters
            return Stats(
                bytes_up=c.bytes_up,
                bytes_down=c.bytes_down,
                connections=c.connections,
                refused=c.refused,
                upstream_failures=c.upstream_failures,
                cut_resets=c.cut_resets,
                loss_resets=c.loss_resets,
                stalls=c.stalls,
                live=len(self._links),
            )

    def attempts_between(self, start: float, end: float) -> int:
        """Connection attempts (forwarded or refused) whose ``time.monotonic()`` lies in
        ``[start, end)``."""
        with self._lock:
            return sum(1 for t in self._counters.attempt_times if start <= t < end)

    # --- forwarding -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        with self._lock:
            self._counters.attempt_times.append(time.monotonic())
            if self._cut:
                self._counters.refused += 1
                _reset(writer)
                return
        try:
            upstream = await asyncio.open_connection(*self.target)
        except OSError:
            with self._lock:
                self._counters.upstream_failures += 1
            _reset(writer)
            return
        link = _Link((reader, writer), upstream)
        with self._lock:
            if self._cut:  # cut while connecting
                self._counters.refused += 1
                link.reset()
                return
            self._counters.connections += 1
            self._links.add(link)
        link.tasks = [
            asyncio.ensure_future(self._pump(link, "up", reader, upstream[1])),
            asyncio.ensure_future(self._pump(link, "down", upstream[0], writer)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            with self._lock:
                self._links.discard(link)
            if not link.dead:
                link.dead = True
                writer.close()
                upstream[1].close()

    def _fault(self, direction: Literal["up", "down"], size: int) -> tuple[bool, float]:
        """For a chunk of ``size`` bytes: (reset the connection?, seconds to stall)."""
        with self._lock:
            loss = self._loss
            if loss is None or not loss.applies(direction):
                return False, 0.0
            self._loss_bytes += size
            self._stall_bytes += size
            may_reset = loss.max_resets is None or self._loss_resets_now < loss.max_resets
            reset = may_reset and self._loss_rng.random() < loss.reset_rate
            if loss.reset_every_bytes and self._loss_bytes >= loss.reset_every_bytes:
                self._loss_bytes = 0
                reset = reset or may_reset
            if reset:
                self._loss_resets_now += 1
                self._counters.loss_resets += 1
                return True, 0.0
            stall = self._loss_rng.random() < loss.stall_rate
            if loss.stall_every_bytes and self._stall_bytes >= loss.stall_every_bytes:
                self._stall_bytes = 0
                stall = True
            if stall:
                self._counters.stalls += 1
                return False, loss.stall_seconds
            return False, 0.0

    async def _pump(
        self,
        link: _Link,
        direction: Literal["up", "down"],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Forward one direction: read, apply faults, deliver after the latency."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=64)

        async def deliver() -> None:
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    due, data = item
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    if (rate := self._bandwidth) is not None:
                        await asyncio.sleep(len(data) / rate)
                    writer.write(data)
                    await writer.drain()
                    with self._lock:
                        if direction == "up":
                            self._counters.bytes_up += len(data)
                        else:
                            self._counters.bytes_down += len(data)
            except (ConnectionError, OSError):
                link.reset()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    break
                reset, stall = self._fault(direction, len(data))
                if reset:
                    link.reset()
                    return
                if stall:
                    await asyncio.sleep(stall)
                await queue.put((loop.time() + self._latency[direction], data))
            await queue.put(None)
            await delivering
        except (ConnectionError, OSError):
            link.reset()  # one side reset: so does the other, as a router would show it
        finally:
            delivering.cancel()

"""Who is calling: the client id from the mutual-TLS certificate, checked on every RPC.

The client id comes from the peer's certificate, never from a request. The certificate must
be the one this coordinator issued to that client (same serial), and the client must not be
revoked. Each client also has a token bucket (``rate_per_second``, bursts of 4×).

Nothing here reads the store per call, so the cost of an RPC does not grow with the fleet
(docs/architecture.md, "Fleet scale"):

- a client is read once, when it first calls, and kept (``CLIENT_CACHE_SIZE`` of them, the
  least recently seen dropped first); a certificate whose serial differs from the kept one
  is checked against the store again before it is refused;
- the revoked ids are read at most every ``REVOCATION_REFRESH`` seconds, by one read that
  concurrent calls share (``Revocations``). A revocation is in force within that time on
  every coordinator of the database; ``fedadamw-coordinator clients revoke`` waits that long
  before it returns, so that what it prints holds.

With ``insecure`` (loopback development only) there is no TLS, so the client id is taken
from the ``fedadamw-client-id`` metadata and nothing proves it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from coordinator import pki
from coordinator.domain import REVOCATION_REFRESH, Client
from coordinator.errors import CoordinatorError, ErrorCode, StoreError
from coordinator.store import Store
from wire import INSECURE_CLIENT_HEADER

__all__ = [
    "CLIENT_CACHE_SIZE",
    "INSECURE_CLIENT_HEADER",
    "Authenticator",
    "Revocations",
]

BURST = 4.0
CLIENT_CACHE_SIZE = 100_000  # clients and peer certificates kept (about 1.5 KB and 0.8 KB each)
READ_TIMEOUT = 10.0  # seconds a read of the revoked ids may take before calls are refused


class Revocations:
    """The revoked client ids, read from the store at most every ``refresh`` seconds.

    What ``current`` returns was read by a query that started at most ``refresh`` seconds
    before the call: calls share a read in flight only if it started that recently, and
    start a newer one otherwise, so a slow read never answers a call that came well after
    it began. A read that fails raises its ``StoreError`` in every call waiting on it, and
    one that takes over ``timeout`` seconds ends them with ``STORE_UNAVAILABLE``; the next
    call reads again. A coordinator that cannot read the revocations refuses, as it would
    without the cache, and never waits on a hung database for more than ``timeout``.
    """

    def __init__(
        self,
        store: Store,
        *,
        refresh: float = REVOCATION_REFRESH,
        timeout: float = READ_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh = refresh
        self.timeout = timeout
        self.clock = clock
        self._ids: frozenset[int] = frozenset()
        self._read_at = -math.inf  # when the query that read ``_ids`` began
        self._not_before = -math.inf  # reads begun before this (``expire``) do not count
        self._reading: tuple[float, asyncio.Task[frozenset[int]]] | None = None

    async def current(self) -> frozenset[int]:
        """The revoked ids, as of at most ``refresh`` seconds before this call."""
        asked = self.clock()
        if asked - self._read_at < self.refresh:
            return self._ids
        reading = self._reading
        if reading is None or reading[0] < asked - self.refresh:
            task = asyncio.ensure_future(self._read(asked))
            # a read whose callers all went away (cancelled RPCs) still has its error taken
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            reading = self._reading = (asked, task)
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(reading[1])
        except TimeoutError:
            if self._reading is reading:
                self._reading = None  # the next call starts another read
            raise StoreError(
                ErrorCode.STORE_UNAVAILABLE,
                f"the revoked clients could not be read within {self.timeout:g}s",
            ) from None

    def expire(self) -> None:
        """Forget the ids read so far: the next call reads them again, and a read begun
        before now, still in flight, is not kept when it ends."""
        self._not_before = self.clock()
        self._read_at = -math.inf
        self._reading = None

    async def _read(self, started: float) -> frozenset[int]:
        """The ids as of ``started`` or later (the query begins after it)."""
        try:
            ids = await asyncio.to_thread(self.store.revoked_client_ids)
        finally:
            if self._reading is not None and self._reading[1] is asyncio.current_task():
                self._reading = None
        if started >= max(self._read_at, self._not_before):
            self._ids, self._read_at = ids, started
        return ids


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class Authenticator:
    def __init__(
        self,
        *,
        store: Store,
        insecure: bool,
        rate_per_second: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.insecure = insecure
        self.rate = rate_per_second
        self.clock = clock
        self.revocations = Revocations(store, clock=clock)
        self._clients: OrderedDict[int, Client] = OrderedDict()
        self._peers: OrderedDict[bytes, tuple[int, int | None]] = OrderedDict()
        self._buckets: OrderedDict[int, _Bucket] = OrderedDict()

    async def client(
        self, context: grpc.aio.ServicerContext[Any, Any], *, cost: float = 1.0
    ) -> Client:
        """The calling client, as the store held it when it was read (see the module
        docstring). Raises UNAUTHENTICATED, REVOKED or RATE_LIMITED."""
        if self.insecure:
            client_id = _insecure_client_id(context)
            serial = None
        else:
            client_id, serial = self._peer(context.auth_context())
        await self.allowed(client_id, cost)
        client = self._clients.get(client_id)
        if client is None or (serial is not None and serial != client.certificate_serial):
            client = await self._read(client_id)
        else:
            self._clients.move_to_end(client_id)
        if serial is not None and serial != client.certificate_serial:
            raise CoordinatorError(
                ErrorCode.UNAUTHENTICATED,
                f"client {client_id} presented certificate serial {serial}, not the one issued",
            )
        if client.revoked:  # revoked since the revoked ids were read
            raise CoordinatorError(ErrorCode.REVOKED, f"client {client_id} is revoked")
        return client

    async def allowed(self, client_id: int, cost: float = 1.0) -> None:
        """Raise REVOKED for a revoked client, then take ``cost`` from its bucket (before any
        read of the store, so a caller the store does not know is rate limited too). Each
        chunk of an upload stream is checked so, so a revocation also ends an open stream."""
        if client_id in await self.revocations.current():
            raise CoordinatorError(ErrorCode.REVOKED, f"client {client_id} is revoked")
        self.spend(client_id, cost)

    def _peer(self, auth: Mapping[str, Iterable[bytes]]) -> tuple[int, int | None]:
        """The client id and certificate serial of a verified TLS peer. Both are functions
        of the certificate's bytes, so they are kept by those bytes and each certificate is
        parsed once, not on every call of its connection."""
        pem = next(iter(auth.get("x509_pem_cert") or ()), None)
        if pem is not None and (known := self._peers.get(pem)) is not None:
            self._peers.move_to_end(pem)
            return known
        entries = {key: list(values) for key, values in auth.items()}
        known = (pki.client_id_from_auth_context(entries), _serial(entries))
        if pem is not None:
            self._peers[pem] = known
            while len(self._peers) > CLIENT_CACHE_SIZE:
                self._peers.popitem(last=False)
        return known

    async def _read(self, client_id: int) -> Client:
        try:
            client = await asyncio.to_thread(self.store.get_client, client_id)
        except StoreError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                raise CoordinatorError(
                    ErrorCode.UNAUTHENTICATED, f"client {client_id} is not enrolled here"
                ) from exc
            raise
        self._clients[client_id] = client
        self._clients.move_to_end(client_id)
        while len(self._clients) > CLIENT_CACHE_SIZE:
            self._clients.popitem(last=False)
        return client

    def spend(self, client_id: int, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from the client's bucket, or raise RATE_LIMITED."""
        now = self.clock()
        capacity = self.rate * BURST
        bucket = self._buckets.get(client_id)
        if bucket is None:
            bucket = self._buckets[client_id] = _Bucket(capacity, now)
            while len(self._buckets) > CLIENT_CACHE_SIZE:
                self._buckets.popitem(last=False)  # the least recently seen starts full again
        self._buckets.move_to_end(client_id)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < cost:
            raise CoordinatorError(
                ErrorCode.RATE_LIMITED, f"client {client_id} is over {self.rate:g} requests/s"
            )
        bucket.tokens -= cost


def _insecure_client_id(context: grpc.aio.ServicerContext[Any, Any]) -> int:
    for key, value in context.invocation_metadata() or ():
        if key == INSECURE_CLIENT_HEADER:
            try:
                return int(value)
            except ValueError:
                break
    raise CoordinatorError(
        ErrorCode.UNAUTHENTICATED,
        f"insecure mode needs the {INSECURE_CLIENT_HEADER} metadata with the client id",
    )


def _serial(auth: Mapping[str, Sequence[bytes]]) -> int | None:
    values = auth.get("x509_pem_cert")
    if not values:
        return None
    try:
        return int(x509.load_pem_x509_certificate(values[0]).serial_number)
    except ValueError:
        return None

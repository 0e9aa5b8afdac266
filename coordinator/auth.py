"""Who is calling: the client id from the mutual-TLS certificate, checked on every RPC.

The client id comes from the peer's certificate, never from a request. The certificate must
be the one this coordinator issued to that client (same serial), and the client must not be
revoked: the store is read on every call, so a revocation takes effect on the next RPC.
Each client also has a token bucket (``rate_per_second``, bursts of 4×).

With ``insecure`` (loopback development only) there is no TLS, so the client id is taken
from the ``fedadamw-client-id`` metadata and nothing proves it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from coordinator import pki
from coordinator.domain import Client
from coordinator.errors import CoordinatorError, ErrorCode, StoreError
from coordinator.store import Store
from wire import INSECURE_CLIENT_HEADER

__all__ = ["INSECURE_CLIENT_HEADER", "Authenticator"]

BURST = 4.0


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
        self._buckets: dict[int, _Bucket] = {}

    async def client(
        self, context: grpc.aio.ServicerContext[Any, Any], *, cost: float = 1.0
    ) -> Client:
        """The calling client. Raises UNAUTHENTICATED, REVOKED or RATE_LIMITED."""
        if self.insecure:
            client_id = _insecure_client_id(context)
            serial = None
        else:
            auth = {key: list(values) for key, values in context.auth_context().items()}
            client_id = pki.client_id_from_auth_context(auth)
            serial = _serial(auth)
        try:
            client = await asyncio.to_thread(self.store.get_client, client_id)
        except StoreError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                raise CoordinatorError(
                    ErrorCode.UNAUTHENTICATED, f"client {client_id} is not enrolled here"
                ) from exc
            raise
        if serial is not None and serial != client.certificate_serial:
            raise CoordinatorError(
                ErrorCode.UNAUTHENTICATED,
                f"client {client_id} presented certificate serial {serial}, not the one issued",
            )
        if client.revoked:
            raise CoordinatorError(ErrorCode.REVOKED, f"client {client_id} is revoked")
        self.spend(client_id, cost)
        return client

    def spend(self, client_id: int, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from the client's bucket, or raise RATE_LIMITED."""
        now = self.clock()
        capacity = self.rate * BURST
        bucket = self._buckets.setdefault(client_id, _Bucket(capacity, now))
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

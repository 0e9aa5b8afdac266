"""The gRPC servicer for edge agents (``fedadamw.v1.EdgeService``).

Each method is a few lines: find the caller, convert the request (``serde``), call the
round machine or the store, convert the answer. Errors become statuses in one place
(``_unary``/``_streaming`` with ``error_catalog``), where every request is also counted by
method and status code. A bad request gets its status and changes nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError, Message

from coordinator import pki, serde
from coordinator.auth import Authenticator
from coordinator.blobs import BlobStore
from coordinator.domain import AuditEvent, Participant, RoundPhase
from coordinator.error_catalog import status_for
from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.metrics import Metrics
from coordinator.outages import Outages
from coordinator.replay import AgentRecord, ShareBatch
from coordinator.round_machine import Assignment, Parse, RoundMachine, UploadProgress
from coordinator.round_state import RoundState
from coordinator.store import Store
from coordinator.tokens import hash_token
from secure_agg import ClientMessage
from wire import DOWNLOAD_CHUNK_BYTES, REFUSAL_TRAILER
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

__all__ = ["EdgeService", "Unparseable", "add_to_server"]

log = logging.getLogger(__name__)

MAX_TOKEN = 256
MAX_LABEL = 200
MAX_CSR = 16 << 10

Context = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Response = TypeVar("Response")


def _unary(
    method: str,
) -> Callable[
    [Callable[[EdgeService, Request, Context], Awaitable[Response]]],
    Callable[[EdgeService, Request, Context], Awaitable[Response]],
]:
    def wrap(
        fn: Callable[[EdgeService, Request, Context], Awaitable[Response]],
    ) -> Callable[[EdgeService, Request, Context], Awaitable[Response]]:
        @functools.wraps(fn)
        async def handler(self: EdgeService, request: Request, context: Context) -> Response:
            started = time.perf_counter()
            try:
                _refuse_unparseable(request)
                response = await fn(self, request, context)
            except CoordinatorError as exc:
                await self._refuse(method, context, exc, started)
            except asyncio.CancelledError:
                # the caller went away or its deadline passed: counted, as every end is
                self._count(method, grpc.StatusCode.CANCELLED, started)
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                log.exception("%s failed", method)
                await self._refuse(
                    method, context, CoordinatorError(ErrorCode.INTERNAL, str(exc)), started
                )
            self._count(method, grpc.StatusCode.OK, started)
            return response

        return handler

    return wrap


def _streaming(
    method: str,
) -> Callable[
    [Callable[[EdgeService, Request, Context], AsyncIterator[Response]]],
    Callable[[EdgeService, Request, Context], AsyncIterator[Response]],
]:
    def wrap(
        fn: Callable[[EdgeService, Request, Context], AsyncIterator[Response]],
    ) -> Callable[[EdgeService, Request, Context], AsyncIterator[Response]]:
        @functools.wraps(fn)
        async def handler(
            self: EdgeService, request: Request, context: Context
        ) -> AsyncIterator[Response]:
            started = time.perf_counter()
            try:
                _refuse_unparseable(request)
                async for item in fn(self, request, context):
                    yield item
            except CoordinatorError as exc:
                await self._refuse(method, context, exc, started)
            except asyncio.CancelledError:
                # the caller went away or its deadline passed: counted, as every end is
                self._count(method, grpc.StatusCode.CANCELLED, started)
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                log.exception("%s failed", method)
                await self._refuse(
                    method, context, CoordinatorError(ErrorCode.INTERNAL, str(exc)), started
                )
            else:
                self._count(method, grpc.StatusCode.OK, started)

        return handler

    return wrap


def _certifies(certificate_pem: bytes, csr_der: bytes) -> bool:
    """Whether the certificate carries the key of the certificate request."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        requested = x509.load_der_x509_csr(csr_der).public_key().public_bytes(*spki)
    except (ValueError, TypeError):
        return False
    issued = x509.load_pem_x509_certificate(certificate_pem).public_key().public_bytes(*spki)
    return issued == requested


@dataclass(frozen=True)
class Unparseable:
    """A request whose bytes do not parse as the method's message (see ``add_to_server``)."""

    problem: str


def _refuse_unparseable(request: object) -> None:
    if isinstance(request, Unparseable):
        raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, request.problem)


def _tolerant(message: type[Message]) -> Callable[[bytes], object]:
    def parse(data: bytes) -> object:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Unparseable(f"the request is not a {message.DESCRIPTOR.name}: {exc}")

    return parse


def add_to_server(service: EdgeService, server: grpc.aio.Server) -> None:
    """Register ``service`` like the generated ``add_EdgeServiceServicer_to_server``, but
    with parsers that hand garbage to the service as ``Unparseable``: it then gets
    INVALID_ARGUMENT and a count in the metrics, not gRPC's UNKNOWN and a traceback."""
    descriptor = pb.DESCRIPTOR.services_by_name["EdgeService"]
    handlers = {}
    for method in descriptor.methods:
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(service, method.name),
            request_deserializer=_tolerant(request),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )


async def _parsed(requests: AsyncIterator[Request]) -> AsyncIterator[Request]:
    """A request stream's messages. gRPC parses each one as the handler reads it, so a
    message that does not parse surfaces here: it is the caller's INVALID_ARGUMENT, not an
    internal error."""
    iterator = aiter(requests)
    while True:
        try:
            item = await anext(iterator)
        except StopAsyncIteration:
            return
        except DecodeError as exc:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT, "a message of the stream does not parse"
            ) from exc
        _refuse_unparseable(item)
        yield item


class EdgeService(pb_grpc.EdgeServiceServicer):
    """The agents' service; see ``proto/fedadamw/v1/edge.proto`` for the contract."""

    def __init__(
        self,
        *,
        machine: RoundMachine,
        store: Store,
        blobs: BlobStore,
        ca: pki.CertificateAuthority | None,
        auth: Authenticator,
        metrics: Metrics,
        checkin_wait: float,
        concurrent_uploads: int = 16,
    ) -> None:
        self.machine = machine
        self.store = store
        self.blobs = blobs
        self.ca = ca
        self.auth = auth
        self.metrics = metrics
        self.checkin_wait = checkin_wait
        self._uploads = asyncio.Semaphore(concurrent_uploads)
        self.outages = Outages(metrics)

    # --- plumbing -----------------------------------------------------------------------

    def _count(self, method: str, code: grpc.StatusCode, started: float) -> None:
        if code is grpc.StatusCode.OK:
            self.outages.succeeded(method)
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.request_seconds.labels(method).observe(time.perf_counter() - started)

    async def _refuse(
        self, method: str, context: Context, error: CoordinatorError, started: float
    ) -> NoReturn:
        """Log and count the refusal, then end the call with its status (``abort`` raises)."""
        status, message = status_for(error)
        if self.outages.refused(method, error):
            level = logging.DEBUG  # the outage is logged once each way, not per request
        elif status is grpc.StatusCode.INTERNAL:
            level = logging.ERROR
        else:
            level = logging.INFO
        log.log(level, "%s refused (%s): %s", method, error.code.value, error.message)
        self._count(method, status, started)
        await context.abort(
            status, message, trailing_metadata=((REFUSAL_TRAILER, error.code.value),)
        )

    async def _caller(self, context: Context, cost: float = 1.0) -> int:
        client = await self.auth.client(context, cost=cost)
        self.machine.seen(client.client_id)
        return client.client_id

    # --- enrollment ---------------------------------------------------------------------

    @_unary("Enroll")
    async def Enroll(self, request: pb.EnrollRequest, context: Context) -> pb.EnrollResponse:
        if not 0 < len(request.token) <= MAX_TOKEN or len(request.label) > MAX_LABEL:
            raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, "token or label has a bad length")
        if len(request.csr_der) > MAX_CSR:
            raise CoordinatorError(ErrorCode.TOO_LARGE, f"the CSR is over {MAX_CSR} bytes")
        identity = serde.exact("identity_key", request.identity_key, serde.KEY_BYTES)
        pki.verify_enrollment_signature(identity, request.token, request.csr_der, request.signature)
        ca = self.ca
        csr = bytes(request.csr_der)
        issued: list[int] = []

        def issue(client_id: int) -> tuple[bytes, int]:
            issued.append(client_id)
            if ca is None:  # --insecure: no TLS, so no certificate to issue
                return b"", 0
            return ca.issue_client_certificate(csr_der=csr, client_id=client_id)

        client = await asyncio.to_thread(
            self.store.enroll,
            token_hash=hash_token(request.token),
            identity_key=identity,
            label=request.label,
            now=datetime.now(UTC),
            issue_certificate=issue,
        )
        if not issued:
            # The store answered a retry (same token, same identity key) with the certificate
            # of the first request; it is of no use to an agent that now holds another key.
            if ca is not None and not _certifies(client.certificate_pem, csr):
                raise CoordinatorError(
                    ErrorCode.CONFLICT,
                    f"this token already enrolled this identity key as client {client.client_id} "
                    "with another TLS key; send the first certificate request again",
                )
            log.info("client %d repeated its enrollment", client.client_id)
        else:
            await asyncio.to_thread(
                self.store.audit,
                AuditEvent(
                    at=datetime.now(UTC),
                    actor=f"client:{client.client_id}",
                    action="enrolled",
                    detail=request.label,
                ),
            )
            log.info("client %d enrolled (%s)", client.client_id, request.label or "no label")
        return pb.EnrollResponse(
            client_id=client.client_id,
            certificate_pem=client.certificate_pem,
            ca_certificate_pem=ca.ca_certificate_pem if ca is not None else b"",
        )

    # --- rounds -------------------------------------------------------------------------

    @_unary("CheckIn")
    async def CheckIn(self, request: pb.CheckInRequest, context: Context) -> pb.CheckInResponse:
        client = await self.auth.client(context)
        self.machine.seen(client.client_id)
        wait = min(float(request.wait_seconds or self.checkin_wait), self.checkin_wait)
        answer = await self.machine.check_in(client, task=request.task, wait=wait)
        if isinstance(answer, Assignment):
            return pb.CheckInResponse(
                assignment=pb.RoundAssignment(
                    round_id=answer.round_id,
                    secagg_id=answer.secagg_id,
                    phase=serde.phase_to_proto(answer.phase),
                )
            )
        return pb.CheckInResponse(retry_after_seconds=answer.seconds)

    @_unary("GetRoundConfig")
    async def GetRoundConfig(self, request: pb.RoundRef, context: Context) -> pb.RoundConfig:
        client_id = await self._caller(context)
        settings, participant, started, phase = self.machine.round_settings(
            client_id,
            serde.check_round_id(request.round_id),
            serde.seen_phase_from_proto(request.phase),
        )
        return serde.settings_to_proto(
            settings, secagg_id=participant.secagg_id, started_at=started, phase=phase
        )

    @_streaming("DownloadBlob")
    async def DownloadBlob(
        self, request: pb.DownloadRequest, context: Context
    ) -> AsyncIterator[pb.BlobChunk]:
        client_id = await self._caller(context)
        sha256 = serde.check_sha256(request.sha256)
        allowed = self.machine.round_blobs(
            client_id,
            serde.check_round_id(request.round_id),
            serde.seen_phase_from_proto(request.phase),
        )
        if sha256 not in allowed:
            raise CoordinatorError(
                ErrorCode.NOT_FOUND, f"blob {sha256} is not one of round {request.round_id}'s"
            )
        chunks = await asyncio.to_thread(
            lambda: iter(
                self.blobs.iter_chunks(
                    sha256, chunk_size=DOWNLOAD_CHUNK_BYTES, start_chunk=request.start_chunk
                )
            )
        )
        total_size = await asyncio.to_thread(self.blobs.size, sha256)
        while True:
            item = await asyncio.to_thread(next, chunks, None)
            if item is None:
                return
            index, total, data = item
            self.metrics.sent_bytes.labels("blob").inc(len(data))
            yield pb.BlobChunk(index=index, total_chunks=total, total_size=total_size, data=data)

    @_streaming("WatchRound")
    async def WatchRound(
        self, request: pb.RoundRef, context: Context
    ) -> AsyncIterator[pb.RoundEvent]:
        client_id = await self._caller(context)
        events = self.machine.watch(
            client_id,
            serde.check_round_id(request.round_id),
            serde.seen_phase_from_proto(request.phase),
        )
        async for event in events:
            yield serde.event_to_proto(event)

    async def _submit(
        self,
        context: Context,
        round_id: str,
        phase: pb.Phase,
        parse: Parse,
        *,
        method: str,
        belongs_to: RoundPhase,
    ) -> pb.Ack:
        client_id = await self._caller(context)
        await self.machine.submit(
            client_id,
            serde.check_round_id(round_id),
            serde.phase_from_proto(phase),
            parse,
            carries=(method, belongs_to),
        )
        return pb.Ack(round_id=round_id, phase=phase)

    @_unary("AdvertiseKeys")
    async def AdvertiseKeys(self, request: pb.AdvertiseKeysRequest, context: Context) -> pb.Ack:
        def parse(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            identity = self.machine.identity_key(p.client_id)
            return serde.advertise_from_proto(request, secagg_id=p.secagg_id, identity_key=identity)

        return await self._submit(
            context,
            request.round_id,
            request.phase,
            parse,
            method="AdvertiseKeys",
            belongs_to=RoundPhase.ADVERTISE_KEYS,
        )

    @_unary("ShareKeys")
    async def ShareKeys(self, request: pb.ShareKeysRequest, context: Context) -> pb.Ack:
        def parse(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            message, records = serde.shares_from_proto(
                request, secagg_id=p.secagg_id, cohort_size=len(state.participants)
            )
            return message, ShareBatch(request.round_id, p.secagg_id, tuple(records))

        return await self._submit(
            context,
            request.round_id,
            request.phase,
            parse,
            method="ShareKeys",
            belongs_to=RoundPhase.SHARE_KEYS,
        )

    @_unary("UploadMaskedInput")
    async def UploadMaskedInput(
        self, request_iterator: AsyncIterator[pb.MaskedInputChunk], context: Context
    ) -> pb.UploadStatus:
        client_id = await self._caller(context)
        # A bounded number of uploads read at once: the rest wait here with at most one
        # HTTP/2 window buffered each, so the coordinator's memory does not grow with n.
        async with self._uploads:
            progress = await self._ingest(client_id, request_iterator)
        if progress is None:
            raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, "the upload stream held no chunk")
        return serde.upload_status_to_proto(progress)

    async def _ingest(
        self, client_id: int, request_iterator: AsyncIterator[pb.MaskedInputChunk]
    ) -> UploadProgress | None:
        round_id = ""
        progress = None
        async for chunk in _parsed(request_iterator):
            if round_id and chunk.round_id != round_id:
                raise CoordinatorError(
                    ErrorCode.INVALID_ARGUMENT, "one upload stream carries one round"
                )
            round_id = serde.check_round_id(chunk.round_id)
            await self.auth.allowed(client_id)
            progress = await self.machine.upload_chunk(
                client_id,
                round_id,
                serde.phase_from_proto(chunk.phase),
                chunk.chunk_index,
                chunk.values,
            )
        return progress

    @_unary("GetUploadStatus")
    async def GetUploadStatus(self, request: pb.RoundRef, context: Context) -> pb.UploadStatus:
        client_id = await self._caller(context)
        progress = self.machine.upload_progress(
            client_id,
            serde.check_round_id(request.round_id),
            serde.seen_phase_from_proto(request.phase),
        )
        return serde.upload_status_to_proto(progress)

    @_unary("SubmitConsistencySignature")
    async def SubmitConsistencySignature(
        self, request: pb.ConsistencySignatureRequest, context: Context
    ) -> pb.Ack:
        def parse(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            return serde.signature_from_proto(request, secagg_id=p.secagg_id)

        return await self._submit(
            context,
            request.round_id,
            request.phase,
            parse,
            method="SubmitConsistencySignature",
            belongs_to=RoundPhase.CONSISTENCY_CHECK,
        )

    @_unary("Unmask")
    async def Unmask(self, request: pb.UnmaskRequest, context: Context) -> pb.Ack:
        def parse(state: RoundState, p: Participant) -> tuple[ClientMessage, AgentRecord]:
            return serde.unmask_from_proto(
                request, secagg_id=p.secagg_id, cohort_size=len(state.participants)
            )

        return await self._submit(
            context,
            request.round_id,
            request.phase,
            parse,
            method="Unmask",
            belongs_to=RoundPhase.UNMASKING,
        )

    @_unary("AbortRound")
    async def AbortRound(self, request: pb.AbortRoundRequest, context: Context) -> pb.Ack:
        client_id = await self._caller(context)
        await self.machine.client_abort(
            client_id,
            serde.check_round_id(request.round_id),
            serde.phase_from_proto(request.phase),
            request.reason[:100],
        )
        return pb.Ack(round_id=request.round_id, phase=request.phase)

    @_unary("Heartbeat")
    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: Context
    ) -> pb.HeartbeatResponse:
        await self._caller(context)
        return pb.HeartbeatResponse(server_unix_ms=int(time.time() * 1000))

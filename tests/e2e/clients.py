"""Misbehaving and hand-driven clients for the auth and bad-input tests.

- ``expect`` awaits a call that must fail with one exact gRPC status.
- ``tls_channel`` opens a channel with whatever credentials a test chooses (none, a forged
  certificate, a certificate on the wrong port); ``send_garbage`` sends bytes that no
  message parses through a raw, serializer-less method of the right streaming kind.
- ``self_made_ca`` and ``client_certificate`` forge certificates, ``enroll_request`` builds
  an Enroll request by hand (to reuse a key, or sign with the wrong one).
- ``HookedSession`` is the agent's own ``RoundSession`` that runs test code just before it
  answers a phase. While a hook runs, this agent is still pending, so the round is held in
  that phase and the hook can send bad messages at a known moment; then the session answers
  normally and the round must commit as if nothing happened.
- ``play_round`` runs one round with known updates, and ``assert_mean_committed`` checks that
  the model it committed is the initial one plus the plain mean of the sent deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.blobs import BlobStore
from coordinator.domain import RoundOutcome
from coordinator.store.sql import SqlStore, default_sqlite_url
from edge_client.enrollment import Credentials, enrollment_payload
from edge_client.session import Outcome, RoundInputs, RoundResult, RoundSession
from secure_agg import SegmentLayout
from wire.v1 import edge_pb2 as pb

from .harness import Coordinator, TestAgent

T = TypeVar("T")

SERVICE = pb.DESCRIPTOR.services_by_name["EdgeService"]
# Field 1 with wire type 7, which does not exist: no message type parses these bytes.
GARBAGE = b"\x0f" + bytes(range(1, 64))
DEADLINE = 10.0  # seconds, for every raw call


# --- statuses ------------------------------------------------------------------------------


async def expect(code: grpc.StatusCode, call: Awaitable[Any]) -> str:
    """Await ``call``, which must fail with ``code``; return the status details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() is code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    return error.details() or ""


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def drain(stream: AsyncIterator[T]) -> list[T]:
    """Every message of a server stream (so that ``expect`` can await a stream)."""
    return [item async for item in stream]


async def stream_of(*items: T) -> AsyncIterator[T]:
    for item in items:
        yield item


# --- channels and raw calls -----------------------------------------------------------------


def tls_channel(
    address: str, *, ca_pem: bytes, key_pem: bytes | None = None, cert_pem: bytes | None = None
) -> grpc.aio.Channel:
    """A TLS channel that trusts ``ca_pem`` and presents ``cert_pem`` if given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.aio.secure_channel(address, credentials)


def method_path(name: str) -> str:
    return f"/{SERVICE.full_name}/{name}"


async def send_garbage(channel: grpc.aio.Channel, method: str) -> grpc.StatusCode:
    """Send ``GARBAGE`` as the request of ``method`` (as its stream's first message for the
    client-streaming one); the status the call ended with."""
    descriptor = SERVICE.methods_by_name[method]
    path = method_path(method)
    if descriptor.client_streaming:
        return await status_of(channel.stream_unary(path)(stream_of(GARBAGE), timeout=DEADLINE))
    if descriptor.server_streaming:
        return await status_of(drain(channel.unary_stream(path)(GARBAGE, timeout=DEADLINE)))
    return await status_of(channel.unary_unary(path)(GARBAGE, timeout=DEADLINE))


# --- certificates and enrollment ------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def self_made_ca(name: str = "fedadamw coordinator CA") -> Authority:
    """A CA that looks like the coordinator's but that no coordinator trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate)


def coordinator_ca(coordinator: Coordinator) -> Authority:
    """The coordinator's own CA, read from its data directory (only a test can do this)."""
    tls = coordinator.data_dir / "tls"
    key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Authority(key, x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes()))


def client_certificate(
    authority: Authority, client_id: int, *, serial: int | None = None
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) naming ``client_id`` the way the coordinator's CA does."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fedadamw-client-{client_id}")])
        )
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"urn:fedadamw:client:{client_id}")]
            ),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedadamw-agent")])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def enroll_request(
    token: str,
    *,
    identity: Ed25519PrivateKey,
    csr_der: bytes | None = None,
    signer: Ed25519PrivateKey | None = None,
    label: str = "hand-made",
) -> pb.EnrollRequest:
    """An Enroll request for ``identity``, signed by ``signer`` (default: ``identity``)."""
    csr = csr_der if csr_der is not None else new_csr()
    return pb.EnrollRequest(
        token=token,
        identity_key=raw_public(identity),
        csr_der=csr,
        signature=(signer or identity).sign(enrollment_payload(token, csr)),
        label=label,
    )


# --- rounds -------------------------------------------------------------------------------

Hook = Callable[["HookedSession"], Awaitable[None]]


class HookedSession(RoundSession):
    """A ``RoundSession`` that awaits ``hooks[name]`` just before its first call ``name``.

    Names are the RPCs that answer a phase: ``AdvertiseKeys``, ``ShareKeys``,
    ``UploadMaskedInput``, ``SubmitConsistencySignature`` and ``Unmask``. ``event`` is the
    round event the session handles (the phase's opening message, with the session id from
    masked input on). Before the upload hook runs, ``masked`` holds the vector the session is
    about to upload (ring elements). ``ran`` lists the hooks that ran, in order, so a test
    can check that none was skipped.
    """

    def __init__(self, *, hooks: Mapping[str, Hook], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hooks = dict(hooks)
        self.ran: list[str] = []
        self.masked: np.ndarray | None = None
        self.event = pb.RoundEvent()

    async def _hook(self, name: str) -> None:
        hook = self.hooks.pop(name, None)
        if hook is not None:
            await hook(self)
            self.ran.append(name)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        await self._hook(what)
        return await super()._call(what, call)

    async def _on_event(
        self,
        event: pb.RoundEvent,
        config: pb.RoundConfig,
        layout: SegmentLayout,
        downloads: asyncio.Future[RoundInputs],
    ) -> RoundResult | None:
        self.event = event
        return await super()._on_event(event, config, layout, downloads)

    async def _upload(self, config: pb.RoundConfig, vector: np.ndarray) -> None:
        self.masked = vector
        await self._hook("UploadMaskedInput")
        await super()._upload(config, vector)

    def chunk_bytes(self, index: int) -> bytes:
        """The bytes of upload chunk ``index`` of ``masked``, as the session sends them."""
        assert self.masked is not None
        assert self.config is not None
        data = self.masked.astype(self.masked.dtype.newbyteorder("<")).tobytes()
        size = self.config.chunk_elements * self.masked.dtype.itemsize
        return data[index * size : (index + 1) * size]


_seeds = itertools.count(1)


class KnownUpdate:
    """An update function that sends random deltas in ±``clip`` and remembers them."""

    def __init__(self, clip: float = 0.02) -> None:
        self.rng = np.random.default_rng(next(_seeds))
        self.clip = clip
        self.sent: dict[str, np.ndarray] = {}

    def __call__(self, inputs: RoundInputs) -> dict[str, np.ndarray]:
        d = inputs.model.shape[0]
        blocks = inputs.second_moment.shape[0]
        out = {
            "delta": self.rng.uniform(-self.clip, self.clip, size=d),
            "weight": np.ones(1),
            "samples": np.array([32.0]),
            "train_loss": np.array([1.0]),
        }
        if blocks:
            out["second_moment"] = self.rng.uniform(0, 1e-3, size=blocks)
        self.sent = out
        return out


@dataclass
class PlayedRound:
    round_id: str
    results: list[RoundResult]
    updates: list[KnownUpdate]
    hooked: HookedSession | None = None
    hooks: list[str] = field(default_factory=list)

    def assert_committed(self) -> int:
        """Every agent saw the round commit the same new version; that version."""
        outcomes = [(r.outcome, r.reason) for r in self.results]
        assert all(o is Outcome.COMMITTED for o, _ in outcomes), outcomes
        versions = {r.model_version for r in self.results}
        assert len(versions) == 1, versions
        if self.hooked is not None:
            assert self.hooked.ran == self.hooks, f"hooks that ran: {self.hooked.ran}"
        (version,) = versions
        assert version is not None
        return version


async def play_round(
    agents: Sequence[TestAgent], hooks: Mapping[str, Hook] | None = None, *, hooked: int = 0
) -> PlayedRound:
    """One round with every agent; ``agents[hooked]`` runs ``hooks`` (if any)."""
    updates = [KnownUpdate() for _ in agents]

    async def one(i: int, agent: TestAgent) -> tuple[RoundSession, RoundResult]:
        assignment = await agent.assignment()
        if hooks is not None and i == hooked:
            session: RoundSession = agent.session(
                assignment, updates[i], HookedSession, hooks=hooks
            )
        else:
            session = agent.session(assignment, updates[i])
        return session, await session.run()

    played = await asyncio.gather(*(one(i, a) for i, a in enumerate(agents)))
    round_ids = {session.round_id for session, _ in played}
    assert len(round_ids) == 1, f"the agents were put in different rounds: {round_ids}"
    session = played[hooked][0]
    return PlayedRound(
        round_id=round_ids.pop(),
        results=[result for _, result in played],
        updates=updates,
        hooked=session if isinstance(session, HookedSession) else None,
        hooks=list(hooks or ()),
    )


def assert_mean_committed(
    coordinator: Coordinator, played: PlayedRound, *, local_steps: int, lr: float
) -> None:
    """The round committed, with every agent surviving, the model before it plus the plain
    mean of the deltas the agents sent (within quantization error)."""
    version = played.assert_committed()
    store = SqlStore(default_sqlite_url(coordinator.data_dir))
    try:
        round_ = store.get_round(played.round_id)
        before, after = store.get_version(version - 1), store.get_version(version)
    finally:
        store.close()
    assert round_.outcome is RoundOutcome.COMMITTED
    assert round_.survivors == len(played.updates)
    blobs = BlobStore(coordinator.data_dir / "blobs")
    x0 = blobs.read_array(before.model_sha256, "<f4").astype(np.float64)
    x1 = blobs.read_array(after.model_sha256, "<f4").astype(np.float64)
    mean = np.mean([u.sent["delta"] for u in played.updates], axis=0)
    clip = 2 * local_steps * lr  # delta_clip_factor × K × η
    np.testing.assert_allclose(x1, x0 + mean, atol=2 * clip / 2**17 + 1e-6)


@contextlib.asynccontextmanager
async def connected(
    coordinator: Coordinator, credentials: Sequence[Credentials], root: Path
) -> AsyncIterator[list[TestAgent]]:
    """Agents for enrolled ``credentials``, with channels on the running event loop."""
    agents = [TestAgent(coordinator, c, root) for c in credentials]
    try:
        yield agents
    finally:
        for agent in agents:
            await agent.close()

"""Who may call, over real gRPC and TLS against a real coordinator process.

The agent port takes only mutual TLS with a certificate this coordinator issued and has not
revoked; the enrollment port takes server-authenticated TLS and serves Enroll alone. Tokens
are single-use and expire. A client's id comes from its certificate only, so an enrolled
client outside a round can do nothing to it, whatever it sends.

One coordinator serves the module; only the last test runs rounds (cohort 3, with a fourth
enrolled client that never checks in and tries to take part anyway).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.auth import INSECURE_CLIENT_HEADER
from coordinator.domain import EnrollmentToken
from coordinator.store.session import default_sqlite_url
from coordinator.store.sql import SqlStore
from coordinator.tokens import hash_token, new_token
from edge_client.enrollment import Credentials, enroll
from edge_client.session import Outcome
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

from .clients import (
    SERVICE,
    HookedSession,
    assert_mean_committed,
    client_certificate,
    connected,
    coordinator_ca,
    drain,
    enroll_request,
    expect,
    play_round,
    self_made_ca,
    stream_of,
    tls_channel,
)
from .harness import FAST, Coordinator, merged

S = grpc.StatusCode
COHORT = 3
CONFIG = merged(FAST, rounds=100, cohort=COHORT, min_clients=COHORT, over_selection=0.0)
TOKENS = {
    "cohort": COHORT,
    "outsider": 1,
    "enroll_port": 1,
    "revocation": 2,
    "direct_revocation": 1,
    "stream_revocation": COHORT,
    "tokens": 3,
}


@dataclass
class Cluster:
    coordinator: Coordinator
    root: Path
    cohort: list[Credentials]
    outsider: Credentials  # enrolled, never checks in
    tokens: dict[str, list[str]]


def _enroll_all(coordinator: Coordinator, tokens: list[str]) -> list[Credentials]:
    async def run() -> list[Credentials]:
        return [
            await enroll(
                address=coordinator.enroll_address,
                ca_certificate_pem=coordinator.ca_pem,
                token=token,
                label=f"agent-{i}",
            )
            for i, token in enumerate(tokens)
        ]

    return asyncio.run(run())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("auth")
    coordinator = Coordinator(root, CONFIG)
    coordinator.start()
    try:
        minted = iter(coordinator.tokens(sum(TOKENS.values())))
        tokens = {use: [next(minted) for _ in range(n)] for use, n in TOKENS.items()}
        *cohort, outsider = _enroll_all(coordinator, tokens["cohort"] + tokens["outsider"])
        yield Cluster(coordinator, root, cohort, outsider, tokens)
    finally:
        coordinator.stop()


def _agent_channel(cluster: Cluster, credentials: Credentials) -> grpc.aio.Channel:
    return tls_channel(
        cluster.coordinator.address,
        ca_pem=credentials.ca_certificate_pem,
        key_pem=credentials.tls_key_pem,
        cert_pem=credentials.certificate_pem,
    )


async def _heartbeat(channel: grpc.aio.Channel) -> pb.HeartbeatResponse:
    stub = pb_grpc.EdgeServiceStub(channel)
    return await stub.Heartbeat(pb.HeartbeatRequest(), timeout=10)


# --- certificates -----------------------------------------------------------------------------


def test_agent_port_requires_a_client_certificate(cluster: Cluster) -> None:
    coordinator = cluster.coordinator

    async def scenario() -> None:
        async with tls_channel(coordinator.address, ca_pem=coordinator.ca_pem) as channel:
            stub = pb_grpc.EdgeServiceStub(channel)
            details = await expect(S.UNAVAILABLE, stub.Heartbeat(pb.HeartbeatRequest(), timeout=5))
            assert details
            # Enroll is not reachable there either: the handshake fails before any RPC
            request = enroll_request("fedadamw_x", identity=Ed25519PrivateKey.generate())
            await expect(S.UNAVAILABLE, stub.Enroll(request, timeout=5))
        # the same caller with its certificate is served
        async with _agent_channel(cluster, cluster.cohort[0]) as channel:
            assert (await _heartbeat(channel)).server_unix_ms > 0

    asyncio.run(scenario())


def test_enrollment_port_serves_enroll_alone_with_the_ca_only(cluster: Cluster) -> None:
    coordinator = cluster.coordinator
    (token,) = cluster.tokens["enroll_port"]

    async def scenario() -> None:
        async with tls_channel(coordinator.enroll_address, ca_pem=coordinator.ca_pem) as channel:
            stub = pb_grpc.EdgeServiceStub(channel)
            answer = await stub.Enroll(
                enroll_request(token, identity=Ed25519PrivateKey.generate()), timeout=10
            )
            assert answer.client_id > 0
            ca = x509.load_pem_x509_certificate(bytes(answer.ca_certificate_pem))
            issued = x509.load_pem_x509_certificate(bytes(answer.certificate_pem))
            issued.verify_directly_issued_by(ca)
            assert bytes(answer.ca_certificate_pem) == coordinator.ca_pem
            # every other RPC needs the agent port: here no certificate is asked for
            await expect(S.UNAUTHENTICATED, stub.Heartbeat(pb.HeartbeatRequest(), timeout=10))
            await expect(
                S.UNAUTHENTICATED, stub.CheckIn(pb.CheckInRequest(wait_seconds=1), timeout=10)
            )
            await expect(
                S.UNAUTHENTICATED,
                drain(stub.WatchRound(pb.RoundRef(round_id=uuid.uuid4().hex), timeout=10)),
            )
        # not even with a real agent certificate, which the enrollment port never asks for
        agent = cluster.cohort[0]
        async with tls_channel(
            coordinator.enroll_address,
            ca_pem=coordinator.ca_pem,
            key_pem=agent.tls_key_pem,
            cert_pem=agent.certificate_pem,
        ) as channel:
            details = await expect(S.UNAUTHENTICATED, _heartbeat(channel))
            assert "certificate" in details

    asyncio.run(scenario())


def test_a_forged_certificate_fails_the_handshake(cluster: Cluster) -> None:
    coordinator = cluster.coordinator
    victim = cluster.cohort[0].client_id
    forger = self_made_ca()
    key_pem, cert_pem = client_certificate(forger, victim)

    async def scenario() -> None:
        async with tls_channel(
            coordinator.address, ca_pem=coordinator.ca_pem, key_pem=key_pem, cert_pem=cert_pem
        ) as channel:
            await expect(S.UNAVAILABLE, _heartbeat(channel))
        # the forger's own CA in the chain does not help either
        async with tls_channel(
            coordinator.address,
            ca_pem=coordinator.ca_pem,
            key_pem=key_pem,
            cert_pem=cert_pem + forger.pem,
        ) as channel:
            await expect(S.UNAVAILABLE, _heartbeat(channel))

    asyncio.run(scenario())


def test_only_the_certificate_issued_at_enrollment_is_accepted(cluster: Cluster) -> None:
    """With the CA's own key (only a test, reading the data directory, has it): a certificate
    for a client that is not enrolled, or another certificate for an enrolled client, passes
    TLS but not the coordinator's check of the issued serial."""
    coordinator = cluster.coordinator
    ca = coordinator_ca(coordinator)
    enrolled = cluster.cohort[1]
    issued_serial = x509.load_pem_x509_certificate(enrolled.certificate_pem).serial_number

    async def scenario() -> None:
        for client_id, serial in [(10_000, None), (enrolled.client_id, issued_serial + 1)]:
            key_pem, cert_pem = client_certificate(ca, client_id, serial=serial)
            async with tls_channel(
                coordinator.address, ca_pem=ca.pem, key_pem=key_pem, cert_pem=cert_pem
            ) as channel:
                details = await expect(S.UNAUTHENTICATED, _heartbeat(channel))
                assert details == "a client certificate from this coordinator is required"
        async with _agent_channel(cluster, enrolled) as channel:
            assert (await _heartbeat(channel)).server_unix_ms > 0

    asyncio.run(scenario())


def test_a_revoked_client_is_refused_at_its_next_rpc(cluster: Cluster) -> None:
    coordinator = cluster.coordinator
    revoked, kept = _enroll_all(coordinator, cluster.tokens["revocation"])

    async def before() -> None:
        for credentials in (revoked, kept):
            async with _agent_channel(cluster, credentials) as channel:
                await _heartbeat(channel)

    async def after(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.EdgeServiceStub(channel)
        details = await expect(S.PERMISSION_DENIED, _heartbeat(channel))
        assert "revoked" in details
        await expect(
            S.PERMISSION_DENIED,
            stub.CheckIn(pb.CheckInRequest(task="digits-cnn", wait_seconds=1), timeout=10),
        )
        await expect(
            S.PERMISSION_DENIED,
            stub.GetRoundConfig(pb.RoundRef(round_id=uuid.uuid4().hex), timeout=10),
        )

    async def scenario() -> None:
        await before()
        # one connection stays open across the revocation: it is refused all the same
        async with _agent_channel(cluster, revoked) as open_channel:
            await _heartbeat(open_channel)
            coordinator.cli("clients", "revoke", str(revoked.client_id))
            await after(open_channel)
        async with _agent_channel(cluster, revoked) as channel:
            await after(channel)
        for other in (kept, *cluster.cohort):
            async with _agent_channel(cluster, other) as channel:
                await _heartbeat(channel)

    asyncio.run(scenario())


def test_a_client_revoked_in_the_database_is_refused_once_the_cache_refreshes(
    cluster: Cluster,
) -> None:
    """The coordinator keeps the clients it has seen and reads the revoked ids once a second
    (coordinator.auth): a revocation written by anything else still reaches it."""
    coordinator = cluster.coordinator
    (revoked,) = _enroll_all(coordinator, cluster.tokens["direct_revocation"])

    async def scenario() -> None:
        async with _agent_channel(cluster, revoked) as channel:
            for _ in range(3):  # the client and the revoked ids are cached now
                await _heartbeat(channel)
            store = SqlStore(coordinator.db_url or default_sqlite_url(coordinator.data_dir))
            try:
                store.revoke_client(revoked.client_id, now=datetime.now(UTC))
            finally:
                store.close()
            # refused within the refresh (1 s) on an idle machine; 30 s allows for busy cores
            deadline = asyncio.get_running_loop().time() + 30
            refusal: grpc.aio.AioRpcError | None = None
            while refusal is None:
                try:
                    await _heartbeat(channel)
                except grpc.aio.AioRpcError as exc:
                    refusal = exc
                assert asyncio.get_running_loop().time() < deadline, "never refused"
                await asyncio.sleep(0.05)
            assert refusal.code() is S.PERMISSION_DENIED, refusal
            assert "revoked" in (refusal.details() or "")

    asyncio.run(scenario())


# --- enrollment tokens ------------------------------------------------------------------------


def _expired_token(coordinator: Coordinator) -> str:
    """A token that expired an hour ago, written into the running coordinator's database
    (no waiting for a short-lived one to run out)."""
    token = new_token()
    now = datetime.now(UTC)
    store = SqlStore(coordinator.db_url or default_sqlite_url(coordinator.data_dir))
    try:
        store.create_token(
            EnrollmentToken(
                token_hash=hash_token(token),
                created_at=now - timedelta(hours=2),
                expires_at=now - timedelta(hours=1),
            )
        )
    finally:
        store.close()
    return token


def test_enrollment_tokens_are_single_use_expiring_and_bound_to_the_signer(
    cluster: Cluster,
) -> None:
    coordinator = cluster.coordinator
    first, second, third = cluster.tokens["tokens"]
    expired = _expired_token(coordinator)

    async def scenario() -> None:
        async with tls_channel(coordinator.enroll_address, ca_pem=coordinator.ca_pem) as channel:
            stub = pb_grpc.EdgeServiceStub(channel)

            async def enroll_with(request: pb.EnrollRequest) -> pb.EnrollResponse:
                return await stub.Enroll(request, timeout=10)

            alice, bob, carol, mallory = (Ed25519PrivateKey.generate() for _ in range(4))
            request = enroll_request(first, identity=alice)
            answer = await enroll_with(request)
            # the answer was lost, so the agent sends the same request again
            retry = await enroll_with(request)
            assert retry.client_id == answer.client_id
            assert retry.certificate_pem == answer.certificate_pem
            # a retry that brings another TLS key could not use that certificate
            details = await expect(
                S.ALREADY_EXISTS, enroll_with(enroll_request(first, identity=alice))
            )
            assert "send the first certificate request again" in details
            # anyone else with that token is refused
            details = await expect(
                S.PERMISSION_DENIED, enroll_with(enroll_request(first, identity=bob))
            )
            assert details == "the enrollment token was already used"
            details = await expect(
                S.PERMISSION_DENIED, enroll_with(enroll_request(expired, identity=bob))
            )
            assert details == "the enrollment token has expired"
            unknown = "fedadamw_" + os.urandom(32).hex()
            details = await expect(
                S.PERMISSION_DENIED, enroll_with(enroll_request(unknown, identity=bob))
            )
            assert details == "the enrollment token is not valid"
            # signed by a key other than the one it enrolls
            details = await expect(
                S.INVALID_ARGUMENT,
                enroll_with(enroll_request(second, identity=carol, signer=mallory)),
            )
            assert "signature" in details
            # an identity key enrolls once, whatever the token
            await expect(S.ALREADY_EXISTS, enroll_with(enroll_request(third, identity=alice)))
            # the refused attempts spent neither token
            for token, identity in ((second, carol), (third, bob)):
                assert (await enroll_with(enroll_request(token, identity=identity))).client_id

    asyncio.run(scenario())


# --- client A cannot act as client B ----------------------------------------------------------


def test_no_request_can_name_a_client() -> None:
    for method in SERVICE.methods:
        names = {field.name for field in method.input_type.fields}
        assert not names & {"client_id", "client", "caller"}, method.name


def test_a_client_outside_the_cohort_cannot_touch_the_round(cluster: Cluster) -> None:
    coordinator = cluster.coordinator
    refused: dict[str, list[str]] = {}

    def outsider_calls(
        stub: pb_grpc.EdgeServiceStub, round_id: str, phase: pb.Phase, victim: int
    ) -> dict[str, Callable[[], Awaitable[object]]]:
        ref = pb.RoundRef(round_id=round_id)
        # claiming the victim's id in metadata (honoured only without TLS) changes nothing
        spoof = ((INSECURE_CLIENT_HEADER, str(victim)),)

        def call(method: Callable[..., Awaitable[object]], request: object) -> Awaitable[object]:
            return method(request, timeout=10, metadata=spoof)

        chunk = pb.MaskedInputChunk(round_id=round_id, phase=phase, chunk_index=0, values=b"")
        return {
            "GetRoundConfig": lambda: call(stub.GetRoundConfig, ref),
            "WatchRound": lambda: drain(stub.WatchRound(ref, timeout=10, metadata=spoof)),
            "GetUploadStatus": lambda: call(stub.GetUploadStatus, ref),
            "AdvertiseKeys": lambda: call(
                stub.AdvertiseKeys,
                pb.AdvertiseKeysRequest(
                    round_id=round_id,
                    phase=phase,
                    encryption_key=os.urandom(32),
                    masking_key=os.urandom(32),
                    signature=os.urandom(64),
                ),
            ),
            "ShareKeys": lambda: call(
                stub.ShareKeys,
                pb.ShareKeysRequest(round_id=round_id, phase=phase, session_id=os.urandom(32)),
            ),
            "UploadMaskedInput": lambda: stub.UploadMaskedInput(
                stream_of(chunk), timeout=10, metadata=spoof
            ),
            "SubmitConsistencySignature": lambda: call(
                stub.SubmitConsistencySignature,
                pb.ConsistencySignatureRequest(
                    round_id=round_id,
                    phase=phase,
                    session_id=os.urandom(32),
                    signature=os.urandom(64),
                ),
            ),
            "Unmask": lambda: call(
                stub.Unmask,
                pb.UnmaskRequest(round_id=round_id, phase=phase, session_id=os.urandom(32)),
            ),
            "AbortRound": lambda: call(
                stub.AbortRound,
                pb.AbortRoundRequest(round_id=round_id, phase=phase, reason="cancelled"),
            ),
        }

    async def scenario() -> None:
        everyone = [*cluster.cohort, cluster.outsider]
        async with connected(coordinator, everyone, cluster.root) as agents:
            *cohort, outsider = agents

            def tries(phase: pb.Phase) -> Callable[[HookedSession], Awaitable[None]]:
                async def hook(s: HookedSession) -> None:
                    victim = cluster.cohort[1].client_id
                    for name, call in outsider_calls(
                        outsider.stub, s.round_id, phase, victim
                    ).items():
                        details = await expect(S.PERMISSION_DENIED, call())
                        assert "not a participant of the round" in details, name
                        refused.setdefault(name, []).append(pb.Phase.Name(phase))
                    assert s.config is not None
                    for blob in (s.config.model, s.config.global_update, s.config.second_moment):
                        request = pb.DownloadRequest(
                            sha256=blob.sha256, round_id=s.round_id, phase=phase
                        )
                        details = await expect(
                            S.PERMISSION_DENIED,
                            drain(outsider.stub.DownloadBlob(request, timeout=10)),
                        )
                        assert "not a participant of the round" in details

                return hook

            hooks = {
                "AdvertiseKeys": tries(pb.PHASE_ADVERTISE_KEYS),
                "ShareKeys": tries(pb.PHASE_SHARE_KEYS),
                "UploadMaskedInput": tries(pb.PHASE_MASKED_INPUT),
                "SubmitConsistencySignature": tries(pb.PHASE_CONSISTENCY_CHECK),
                "Unmask": tries(pb.PHASE_UNMASKING),
            }
            played = await play_round(cohort, hooks)
            assert_mean_committed(
                coordinator, played, local_steps=CONFIG["local_steps"], lr=CONFIG["lr"]
            )
            # after the round, the outsider cannot even learn how it ended; a member can
            ref = pb.RoundRef(round_id=played.round_id)
            await expect(S.PERMISSION_DENIED, drain(outsider.stub.WatchRound(ref, timeout=10)))
            (event,) = await drain(cohort[2].stub.WatchRound(ref, timeout=10))
            assert event.finished.outcome == pb.OUTCOME_COMMITTED

    asyncio.run(scenario())
    assert len(refused) == 9
    assert all(len(phases) == 5 for phases in refused.values()), refused


def test_a_revocation_ends_an_upload_stream_that_is_open(cluster: Cluster) -> None:
    """Each chunk of an upload checks the revocations (coordinator/auth.py), so a client
    revoked while its stream is open is refused at its next chunk. Its round then has fewer
    than min_clients (3) inputs and aborts cleanly, and the others are served after it."""
    coordinator = cluster.coordinator
    credentials = _enroll_all(coordinator, cluster.tokens["stream_revocation"])
    refusals: list[grpc.aio.AioRpcError] = []

    async def scenario() -> list[tuple[Outcome, str | None]]:
        async with connected(coordinator, credentials, cluster.root) as agents:
            revoked = agents[0]

            async def hook(s: HookedSession) -> None:
                assert s.masked is not None
                assert s.config is not None
                data = s.masked.astype(s.masked.dtype.newbyteorder("<")).tobytes()
                size = s.config.chunk_elements * s.masked.dtype.itemsize

                async def chunks() -> AsyncIterator[pb.MaskedInputChunk]:
                    for i in range(2):
                        yield pb.MaskedInputChunk(
                            round_id=s.round_id,
                            phase=pb.PHASE_MASKED_INPUT,
                            chunk_index=i,
                            values=data[i * size : (i + 1) * size],
                        )
                        if i == 0:  # the stream stays open while the operator revokes
                            client_id = str(revoked.credentials.client_id)
                            await asyncio.to_thread(coordinator.cli, "clients", "revoke", client_id)

                try:
                    await revoked.stub.UploadMaskedInput(chunks(), timeout=60)
                except grpc.aio.AioRpcError as exc:
                    refusals.append(exc)

            played = await play_round(agents, {"UploadMaskedInput": hook})
            for other in agents[1:]:
                assert (await _heartbeat(other.channel)).server_unix_ms > 0
            return [(r.outcome, r.reason) for r in played.results]

    outcomes = asyncio.run(scenario())
    (refusal,) = refusals
    assert refusal.code() is S.PERMISSION_DENIED, refusal
    assert "revoked" in (refusal.details() or "")
    assert outcomes[0][0] is Outcome.DROPPED, outcomes
    assert "revoked" in (outcomes[0][1] or ""), outcomes
    assert outcomes[1:] == [(Outcome.ABORTED, "too_few_clients")] * 2, outcomes

"""Bad input on every RPC, over real gRPC and TLS against a real coordinator process.

Each test sends malformed, stale, early, oversized, duplicated or unparseable messages and
checks the exact status. The messages go out while a round is held in a known phase: one
cohort member is a ``HookedSession`` that sends them from the same mutual-TLS channel just
before it answers that phase itself (the phase cannot close while it is pending). Then the
round must go on untouched: every agent sees it commit, and the committed model is the
plain mean of what the agents sent.

One coordinator serves the module (rounds run one after another); the rate-limit test
starts its own, with a low limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from coordinator.store.sql import SqlStore, default_sqlite_url
from edge_client.enrollment import Credentials, enroll, mutual_tls_channel
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

from .clients import (
    GARBAGE,
    SERVICE,
    Hook,
    HookedSession,
    PlayedRound,
    assert_mean_committed,
    connected,
    drain,
    enroll_request,
    expect,
    new_csr,
    play_round,
    send_garbage,
    stream_of,
    tls_channel,
)
from .harness import FAST, Coordinator, TestAgent, merged

S = grpc.StatusCode
ADVERTISE, SHARE, MASKED = pb.PHASE_ADVERTISE_KEYS, pb.PHASE_SHARE_KEYS, pb.PHASE_MASKED_INPUT
CONSISTENCY, UNMASK = pb.PHASE_CONSISTENCY_CHECK, pb.PHASE_UNMASKING
COHORT = 4
CHUNK_ELEMENTS = 2048
CONFIG = merged(
    FAST,
    rounds=100,
    cohort=COHORT,
    min_clients=COHORT,  # a participant dropped by a bad message would abort the round
    limits={"chunk_elements": CHUNK_ELEMENTS},
)
MAX_MESSAGE = CHUNK_ELEMENTS * 8 + (1 << 16)  # the server's receive limit (coordinator/server.py)


@dataclass
class Cluster:
    coordinator: Coordinator
    root: Path
    agents: list[Credentials]
    spare_tokens: list[str]
    finished_round: str  # a round that committed before the tests' rounds
    first_model: str  # version 0's model blob: stored, but no later round's

    def play(self, hooks: dict[str, Hook]) -> PlayedRound:
        """A round in which agent 0 runs ``hooks``; it must commit the plain mean."""

        async def scenario() -> PlayedRound:
            async with connected(self.coordinator, self.agents, self.root) as agents:
                return await play_round(agents, hooks)

        played = asyncio.run(scenario())
        assert_mean_committed(
            self.coordinator, played, local_steps=CONFIG["local_steps"], lr=CONFIG["lr"]
        )
        return played


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("bad-input")
    coordinator = Coordinator(root, CONFIG)
    coordinator.start()
    try:
        tokens = coordinator.tokens(COHORT + 1)

        async def setup() -> tuple[list[Credentials], PlayedRound]:
            credentials = [
                await enroll(
                    address=coordinator.enroll_address,
                    ca_certificate_pem=coordinator.ca_pem,
                    token=token,
                    label=f"agent-{i}",
                )
                for i, token in enumerate(tokens[:COHORT])
            ]
            async with connected(coordinator, credentials, root) as agents:
                return credentials, await play_round(agents)

        credentials, first = asyncio.run(setup())
        assert first.assert_committed() == 1
        store = SqlStore(default_sqlite_url(coordinator.data_dir))
        first_model = store.get_version(0).model_sha256
        store.close()
        yield Cluster(
            coordinator=coordinator,
            root=root,
            agents=credentials,
            spare_tokens=tokens[COHORT:],
            finished_round=first.round_id,
            first_model=first_model,
        )
    finally:
        coordinator.stop()


async def _messages_naming_an_answered_phase_are_refused(
    stub: pb_grpc.EdgeServiceStub, rid: str, session_id: bytes
) -> None:
    """Found by the member fuzzer (tests/faults/test_fuzz_member.py): a consistency
    signature whose request named phase advertise_keys, sent by an agent that had answered
    that phase, was acknowledged OK as a resend of its advert, and nothing was recorded; the
    agent took itself for signed and was dropped. A message that names a phase other than
    its RPC's is now INVALID_ARGUMENT, and says which."""
    for call, phase in [
        (
            stub.SubmitConsistencySignature(_signature(rid, ADVERTISE, session_id=session_id)),
            "advertise_keys",
        ),
        (stub.Unmask(_unmask(rid, SHARE, session_id=session_id)), "share_keys"),
        (stub.ShareKeys(_shares(rid, ADVERTISE)), "advertise_keys"),
        (stub.AdvertiseKeys(_advert(rid, CONSISTENCY)), "consistency_check"),
    ]:
        details = await expect(S.INVALID_ARGUMENT, call)
        assert f"names phase {phase}" in details, details
    # the true resend of an answered phase is still acknowledged
    ack = await stub.AdvertiseKeys(_advert(rid), timeout=10)
    assert (ack.round_id, ack.phase) == (rid, ADVERTISE)


def _advert(round_id: str, phase: int = ADVERTISE, **fields: bytes) -> pb.AdvertiseKeysRequest:
    values = {
        "encryption_key": os.urandom(32),
        "masking_key": os.urandom(32),
        "signature": os.urandom(64),
        "self_mask_commitment": os.urandom(32),
    }
    values.update(fields)
    return pb.AdvertiseKeysRequest(round_id=round_id, phase=phase, **values)


def _shares(
    round_id: str, phase: int = SHARE, *, session_id: bytes = b"", **kw: object
) -> pb.ShareKeysRequest:
    return pb.ShareKeysRequest(
        round_id=round_id, phase=phase, session_id=session_id or os.urandom(32), **kw
    )


def _signature(
    round_id: str, phase: int = CONSISTENCY, *, session_id: bytes = b"", signature: bytes = b""
) -> pb.ConsistencySignatureRequest:
    return pb.ConsistencySignatureRequest(
        round_id=round_id,
        phase=phase,
        session_id=session_id or os.urandom(32),
        signature=signature or os.urandom(64),
    )


def _unmask(
    round_id: str, phase: int = UNMASK, *, session_id: bytes = b"", **kw: object
) -> pb.UnmaskRequest:
    return pb.UnmaskRequest(
        round_id=round_id, phase=phase, session_id=session_id or os.urandom(32), **kw
    )


def _chunk(round_id: str, index: int, values: bytes, phase: int = MASKED) -> pb.MaskedInputChunk:
    return pb.MaskedInputChunk(round_id=round_id, phase=phase, chunk_index=index, values=values)


def _upload(stub: pb_grpc.EdgeServiceStub, *chunks: pb.MaskedInputChunk) -> Awaitable[object]:
    return stub.UploadMaskedInput(stream_of(*chunks), timeout=10)


# --- enrollment and requests outside rounds ---------------------------------------------------


def test_enroll_refuses_malformed_requests_and_keeps_the_token(cluster: Cluster) -> None:
    coordinator = cluster.coordinator
    token = cluster.spare_tokens[0]

    async def scenario() -> int:
        async with tls_channel(coordinator.enroll_address, ca_pem=coordinator.ca_pem) as channel:
            stub = pb_grpc.EdgeServiceStub(channel)
            identity = Ed25519PrivateKey.generate()

            def request(**changes: object) -> pb.EnrollRequest:
                out = enroll_request(token, identity=identity)
                for name, value in changes.items():
                    setattr(out, name, value)
                return out

            invalid = [
                request(token=""),
                request(token="t" * 257),
                request(label="l" * 201),
                request(identity_key=request().identity_key[:31]),
                request(signature=request().signature[:63]),
                # well formed, but signed over another CSR: the signature does not verify
                request(csr_der=new_csr()),
                # properly signed garbage where the CSR should be
                enroll_request(token, identity=identity, csr_der=b"\x30\x03\x02\x01\x00"),
            ]
            for bad in invalid:
                await expect(S.INVALID_ARGUMENT, stub.Enroll(bad, timeout=10))
            big_csr = enroll_request(token, identity=identity, csr_der=b"\x30" * (16 * 1024 + 1))
            await expect(S.RESOURCE_EXHAUSTED, stub.Enroll(big_csr, timeout=10))
            huge = enroll_request(token, identity=identity, csr_der=b"\x30" * MAX_MESSAGE)
            await expect(S.RESOURCE_EXHAUSTED, stub.Enroll(huge, timeout=10))
            assert await send_garbage(channel, "Enroll") is not S.OK
            # none of that spent the token
            answer = await stub.Enroll(request(), timeout=10)
            return int(answer.client_id)

    assert asyncio.run(scenario()) > COHORT


def test_check_in_and_heartbeat_refuse_bad_requests(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with connected(cluster.coordinator, cluster.agents[:1], cluster.root) as (agent,):
            stub = agent.stub
            details = await expect(
                S.INVALID_ARGUMENT,
                stub.CheckIn(pb.CheckInRequest(task="another-task", wait_seconds=1), timeout=10),
            )
            assert "another-task" in details
            too_big = pb.HeartbeatRequest(status="s" * MAX_MESSAGE)
            await expect(S.RESOURCE_EXHAUSTED, stub.Heartbeat(too_big, timeout=10))
            answer = await stub.Heartbeat(pb.HeartbeatRequest(status="idle"), timeout=10)
            assert abs(answer.server_unix_ms / 1000 - time.time()) < 60

    asyncio.run(scenario())


# --- round ids and phases ----------------------------------------------------------------------


def _round_calls(
    stub: pb_grpc.EdgeServiceStub, round_id: str
) -> dict[str, Callable[[], Awaitable[object]]]:
    """A well-formed call of each round RPC that names ``round_id``."""
    ref = pb.RoundRef(round_id=round_id)
    return {
        "GetRoundConfig": lambda: stub.GetRoundConfig(ref, timeout=10),
        "GetUploadStatus": lambda: stub.GetUploadStatus(ref, timeout=10),
        "AdvertiseKeys": lambda: stub.AdvertiseKeys(_advert(round_id), timeout=10),
        "ShareKeys": lambda: stub.ShareKeys(_shares(round_id), timeout=10),
        "UploadMaskedInput": lambda: _upload(stub, _chunk(round_id, 0, b"\0" * 8)),
        "SubmitConsistencySignature": lambda: stub.SubmitConsistencySignature(
            _signature(round_id), timeout=10
        ),
        "Unmask": lambda: stub.Unmask(_unmask(round_id), timeout=10),
        "DownloadBlob": lambda: drain(
            stub.DownloadBlob(pb.DownloadRequest(sha256="0" * 64, round_id=round_id), timeout=10)
        ),
        "AbortRound": lambda: stub.AbortRound(
            pb.AbortRoundRequest(round_id=round_id, phase=ADVERTISE, reason="cancelled"),
            timeout=10,
        ),
    }


def test_round_ids_are_checked_on_every_round_rpc(cluster: Cluster) -> None:
    async def during_advertise_keys(s: HookedSession) -> None:
        unknown = uuid.uuid4().hex
        for round_id, code in [
            ("", S.INVALID_ARGUMENT),
            ("r" * 65, S.INVALID_ARGUMENT),
            (unknown, S.FAILED_PRECONDITION),
            (cluster.finished_round, S.FAILED_PRECONDITION),
        ]:
            for name, call in _round_calls(s.stub, round_id).items():
                details = await expect(code, call())
                assert details, name
        # WatchRound serves a finished round (an agent that reconnects learns its outcome),
        # and knows no other
        (event,) = await drain(s.stub.WatchRound(pb.RoundRef(round_id=cluster.finished_round)))
        assert event.finished.outcome == pb.OUTCOME_COMMITTED
        assert event.finished.model_version == 1
        await expect(S.NOT_FOUND, drain(s.stub.WatchRound(pb.RoundRef(round_id=unknown))))
        await expect(S.INVALID_ARGUMENT, drain(s.stub.WatchRound(pb.RoundRef(round_id=""))))
        # the open round is still there for this agent
        config = await s.stub.GetRoundConfig(pb.RoundRef(round_id=s.round_id), timeout=10)
        assert config.round_id == s.round_id

    cluster.play({"AdvertiseKeys": during_advertise_keys})


def test_reads_name_a_phase_the_round_has_reached(cluster: Cluster) -> None:
    async def during_share_keys(s: HookedSession) -> None:
        stub, rid = s.stub, s.round_id
        assert s.config is not None
        model = s.config.model.sha256

        async def first_event(ref: pb.RoundRef) -> pb.RoundEvent:
            call = stub.WatchRound(ref, timeout=10)
            try:
                event: pb.RoundEvent = await call.read()
                return event
            finally:
                call.cancel()

        def reads(phase: int) -> dict[str, Callable[[], Awaitable[object]]]:
            ref = pb.RoundRef(round_id=rid, phase=phase)
            blob = pb.DownloadRequest(sha256=model, round_id=rid, phase=phase)
            return {
                "GetRoundConfig": lambda: stub.GetRoundConfig(ref, timeout=10),
                "GetUploadStatus": lambda: stub.GetUploadStatus(ref, timeout=10),
                "WatchRound": lambda: first_event(ref),
                "DownloadBlob": lambda: drain(stub.DownloadBlob(blob, timeout=10)),
            }

        # phases the round has not reached, its ends included
        for phase in (pb.PHASE_MASKED_INPUT, pb.PHASE_UNMASKING, pb.PHASE_COMMITTED):
            for name, call in reads(phase).items():
                details = await expect(S.FAILED_PRECONDITION, call())
                assert "has not reached" in details, name
        for name, call in reads(99).items():
            details = await expect(S.INVALID_ARGUMENT, call())
            assert "not a round phase" in details, name
        # none seen yet, an earlier phase, and the current one are all fine
        for phase in (pb.PHASE_UNSPECIFIED, pb.PHASE_ADVERTISE_KEYS, pb.PHASE_SHARE_KEYS):
            answers = {name: await call() for name, call in reads(phase).items()}
            config = answers["GetRoundConfig"]
            assert isinstance(config, pb.RoundConfig)
            assert config.phase == pb.PHASE_SHARE_KEYS  # answers carry the round's phase
            status = answers["GetUploadStatus"]
            assert isinstance(status, pb.UploadStatus)
            assert status.phase == pb.PHASE_SHARE_KEYS
            event = answers["WatchRound"]
            assert isinstance(event, pb.RoundEvent)
            assert event.phase == pb.PHASE_SHARE_KEYS

    cluster.play({"ShareKeys": during_share_keys})


def test_advertise_keys_refuses_bad_keys_and_other_phases(cluster: Cluster) -> None:
    async def during_advertise_keys(s: HookedSession) -> None:
        stub, rid = s.stub, s.round_id
        for fields in [
            {"encryption_key": os.urandom(31)},
            {"masking_key": os.urandom(31)},
            {"masking_key": os.urandom(33)},
            {"signature": os.urandom(63)},
            {"encryption_key": b""},
            {"self_mask_commitment": os.urandom(31)},
        ]:
            details = await expect(S.INVALID_ARGUMENT, stub.AdvertiseKeys(_advert(rid, **fields)))
            assert "must be" in details
        # right lengths, but the signature is not by this agent's identity key
        details = await expect(S.INVALID_ARGUMENT, stub.AdvertiseKeys(_advert(rid)))
        assert "secure-aggregation" in details
        for phase in (pb.PHASE_UNSPECIFIED, 42):
            await expect(S.INVALID_ARGUMENT, stub.AdvertiseKeys(_advert(rid, phase)))
        # an advert that names another phase is malformed, whatever the round's phase
        await expect(S.INVALID_ARGUMENT, stub.AdvertiseKeys(_advert(rid, SHARE)))
        # messages of later phases are early
        await expect(S.FAILED_PRECONDITION, stub.ShareKeys(_shares(rid)))
        await expect(S.FAILED_PRECONDITION, _upload(stub, _chunk(rid, 0, b"\0" * 8)))
        await expect(S.FAILED_PRECONDITION, stub.SubmitConsistencySignature(_signature(rid)))
        await expect(S.FAILED_PRECONDITION, stub.Unmask(_unmask(rid)))
        await expect(
            S.FAILED_PRECONDITION,
            stub.AbortRound(pb.AbortRoundRequest(round_id=rid, phase=UNMASK, reason="x")),
        )
        await expect(
            S.INVALID_ARGUMENT,
            stub.AbortRound(pb.AbortRoundRequest(round_id=rid, phase=pb.PHASE_UNSPECIFIED)),
        )
        # a message of another phase that claims this one is refused by the aggregation
        await expect(S.INVALID_ARGUMENT, stub.ShareKeys(_shares(rid, ADVERTISE)))
        status = await stub.GetUploadStatus(pb.RoundRef(round_id=rid))
        assert list(status.received_chunks) == []
        assert not status.complete

    cluster.play({"AdvertiseKeys": during_advertise_keys})


def test_share_keys_refuses_bad_shares_and_other_phases(cluster: Cluster) -> None:
    async def during_share_keys(s: HookedSession) -> None:
        stub, rid = s.stub, s.round_id
        assert s.config is not None
        me = s.config.secagg_id
        others = [i for i in range(1, COHORT + 1) if i != me]

        def share(recipient: int, *, sender: int = me, size: int = 108) -> pb.EncryptedShare:
            return pb.EncryptedShare(sender=sender, recipient=recipient, ciphertext=bytes(size))

        good = [share(r) for r in others]
        await expect(S.INVALID_ARGUMENT, stub.ShareKeys(_shares(rid, session_id=bytes(5))))
        await expect(S.INVALID_ARGUMENT, stub.ShareKeys(_shares(rid, session_id=bytes(33))))
        too_many = [share(r) for r in range(1, COHORT + 2)]
        details = await expect(S.RESOURCE_EXHAUSTED, stub.ShareKeys(_shares(rid, shares=too_many)))
        assert f"cohort of {COHORT}" in details
        huge = [*good[:-1], share(others[-1], size=257)]
        await expect(S.RESOURCE_EXHAUSTED, stub.ShareKeys(_shares(rid, shares=huge)))
        # shares that claim to come from another participant
        spoofed = [share(r, sender=others[0]) for r in others]
        details = await expect(S.INVALID_ARGUMENT, stub.ShareKeys(_shares(rid, shares=spoofed)))
        assert f"secagg id {me}" in details
        # well formed, but for another session
        await expect(S.INVALID_ARGUMENT, stub.ShareKeys(_shares(rid, shares=good)))
        for phase in (pb.PHASE_UNSPECIFIED, 99):
            await expect(S.INVALID_ARGUMENT, stub.ShareKeys(_shares(rid, phase, shares=good)))
        # the keys phase is over: an advert now is taken for a resend of the one accepted
        # (its answer lost as the phase closed) and acknowledged without being read
        ack = await stub.AdvertiseKeys(_advert(rid), timeout=10)
        assert (ack.round_id, ack.phase) == (rid, ADVERTISE)
        # later phases have not begun
        await expect(S.INVALID_ARGUMENT, stub.AdvertiseKeys(_advert(rid, SHARE)))
        await expect(S.FAILED_PRECONDITION, _upload(stub, _chunk(rid, 0, b"\0" * 8)))
        await expect(S.FAILED_PRECONDITION, stub.Unmask(_unmask(rid)))

    cluster.play({"ShareKeys": during_share_keys})


def test_upload_refuses_bad_chunks_and_accepts_a_resend(cluster: Cluster) -> None:
    async def during_masked_input(s: HookedSession) -> None:
        stub, rid = s.stub, s.round_id
        assert s.config is not None
        assert s.masked is not None
        total = s.config.total_chunks
        assert total >= 3, "the layout must span several chunks for this test"
        first, last = s.chunk_bytes(0), s.chunk_bytes(total - 1)
        assert len(last) < len(first)
        for index, values in [
            (0, first[:-1]),
            (0, first + b"\0"),
            (0, b""),
            (total - 1, first),  # the last chunk is shorter
            (total, first),  # out of range
            (2**32 - 1, first),
        ]:
            await expect(S.INVALID_ARGUMENT, _upload(stub, _chunk(rid, index, values)))
        await expect(S.RESOURCE_EXHAUSTED, _upload(stub, _chunk(rid, 1, bytes(MAX_MESSAGE))))
        await expect(S.INVALID_ARGUMENT, _upload(stub))  # an empty stream
        await expect(S.INVALID_ARGUMENT, _upload(stub, _chunk(rid, 0, first, pb.PHASE_UNSPECIFIED)))
        await expect(S.FAILED_PRECONDITION, _upload(stub, _chunk(rid, 0, first, SHARE)))
        # the first chunk, then the same bytes again: both acknowledged alike
        once = await _upload(stub, _chunk(rid, 0, first))
        again = await _upload(stub, _chunk(rid, 0, first))
        assert isinstance(once, pb.UploadStatus)
        assert once == again
        assert list(once.received_chunks) == [0]
        assert once.total_chunks == total
        assert not once.complete
        # the same chunk with other bytes conflicts, alone or inside a stream
        other = bytes(len(first))
        await expect(S.ALREADY_EXISTS, _upload(stub, _chunk(rid, 0, other)))
        await expect(S.ALREADY_EXISTS, _upload(stub, _chunk(rid, 0, first), _chunk(rid, 0, other)))
        # one stream carries one round
        mixed = _upload(stub, _chunk(rid, 0, first), _chunk(rid, 1, s.chunk_bytes(1)))
        assert isinstance(await mixed, pb.UploadStatus)
        await expect(
            S.INVALID_ARGUMENT,
            _upload(stub, _chunk(rid, 0, first), _chunk(uuid.uuid4().hex, 2, s.chunk_bytes(2))),
        )
        # a message of a passed phase is a resend, acknowledged unread; a later one is early
        ack = await stub.ShareKeys(_shares(rid), timeout=10)
        assert (ack.round_id, ack.phase) == (rid, SHARE)
        await expect(S.FAILED_PRECONDITION, stub.SubmitConsistencySignature(_signature(rid)))
        status = await stub.GetUploadStatus(pb.RoundRef(round_id=rid))
        assert list(status.received_chunks) == [0, 1]
        # the session goes on from what is durable: chunks 2 onwards

    cluster.play({"UploadMaskedInput": during_masked_input})


def test_consistency_and_unmasking_refuse_bad_messages(cluster: Cluster) -> None:
    async def during_consistency_check(s: HookedSession) -> None:
        stub, rid = s.stub, s.round_id
        session_id = bytes(s.event.consistency.session_id)
        assert len(session_id) == 32
        for request in [
            _signature(rid, session_id=session_id, signature=os.urandom(63)),
            _signature(rid, session_id=bytes(5)),
            # right shapes, but not this agent's signature over the survivors
            _signature(rid, session_id=session_id),
            _signature(rid),  # another session
            _signature(rid, pb.PHASE_UNSPECIFIED, session_id=session_id),
        ]:
            await expect(S.INVALID_ARGUMENT, stub.SubmitConsistencySignature(request))
        # the upload is over: even the same bytes are now out of phase
        await expect(S.FAILED_PRECONDITION, _upload(stub, _chunk(rid, 0, s.chunk_bytes(0))))
        await expect(
            S.FAILED_PRECONDITION, _upload(stub, _chunk(rid, 0, s.chunk_bytes(0), CONSISTENCY))
        )
        await expect(S.FAILED_PRECONDITION, stub.Unmask(_unmask(rid, session_id=session_id)))
        status = await stub.GetUploadStatus(pb.RoundRef(round_id=rid))
        assert status.complete

    async def during_unmasking(s: HookedSession) -> None:
        stub, rid = s.stub, s.round_id
        assert s.config is not None
        session_id = bytes(s.event.unmask.session_id)
        me = s.config.secagg_id
        neighbour = next(i for i in range(1, COHORT + 1) if i != me)

        def revealed(owner: int, size: int = 32) -> pb.RevealedShare:
            return pb.RevealedShare(owner=owner, share=bytes(size))

        for request in [
            _unmask(rid, session_id=session_id, self_mask_shares=[revealed(neighbour, 31)]),
            _unmask(rid, session_id=session_id, key_shares=[revealed(neighbour, 33)]),
            _unmask(rid, session_id=bytes(5)),
            # right shapes: two shares of one secret, a share of a stranger, another session
            _unmask(
                rid,
                session_id=session_id,
                self_mask_shares=[revealed(neighbour), revealed(neighbour)],
            ),
            _unmask(rid, session_id=session_id, self_mask_shares=[revealed(99)]),
            _unmask(rid, self_mask_shares=[revealed(neighbour)]),
            _unmask(rid, pb.PHASE_UNSPECIFIED, session_id=session_id),
        ]:
            await expect(S.INVALID_ARGUMENT, stub.Unmask(request))
        too_many = [revealed(i) for i in range(1, COHORT + 2)]
        details = await expect(
            S.RESOURCE_EXHAUSTED,
            stub.Unmask(_unmask(rid, session_id=session_id, key_shares=too_many)),
        )
        assert f"cohort of {COHORT}" in details
        # the signature phase is over: a signature now is a resend, acknowledged unread
        ack = await stub.SubmitConsistencySignature(
            _signature(rid, session_id=session_id), timeout=10
        )
        assert (ack.round_id, ack.phase) == (rid, pb.PHASE_CONSISTENCY_CHECK)
        await _messages_naming_an_answered_phase_are_refused(stub, rid, session_id)

    cluster.play(
        {"SubmitConsistencySignature": during_consistency_check, "Unmask": during_unmasking}
    )


def test_download_blob_serves_only_the_round_blobs(cluster: Cluster) -> None:
    async def during_share_keys(s: HookedSession) -> None:
        stub = s.stub
        assert s.config is not None
        model = s.config.model.sha256
        assert cluster.first_model != model

        def download(
            sha256: str, start: int = 0, round_id: str = s.round_id
        ) -> Awaitable[list[pb.BlobChunk]]:
            request = pb.DownloadRequest(
                sha256=sha256, start_chunk=start, round_id=round_id, phase=pb.PHASE_SHARE_KEYS
            )
            return drain(stub.DownloadBlob(request, timeout=10))

        for malformed in ["", "zz", model.upper(), model[:-1], model + "0", "../" + model[3:]]:
            await expect(S.INVALID_ARGUMENT, download(malformed))
        await expect(S.NOT_FOUND, download(cluster.first_model))  # stored, not this round's
        await expect(S.NOT_FOUND, download(hashlib.sha256(b"nothing").hexdigest()))
        await expect(S.INVALID_ARGUMENT, download(model, start=10**6))
        await expect(S.INVALID_ARGUMENT, download(model, round_id=""))  # which round?
        await expect(S.FAILED_PRECONDITION, download(model, round_id=cluster.finished_round))
        chunks = await download(model)
        data = b"".join(c.data for c in chunks)
        assert hashlib.sha256(data).hexdigest() == model
        assert len(data) == s.config.model.size

    cluster.play({"ShareKeys": during_share_keys})


def test_garbage_bytes_fail_every_method_and_harm_nothing(cluster: Cluster) -> None:
    for method in SERVICE.methods:
        with pytest.raises(DecodeError):
            getattr(pb, method.input_type.name).FromString(GARBAGE)

    async def during_advertise_keys(s: HookedSession) -> None:
        # from the hooked agent's identity, on a channel of its own
        async with mutual_tls_channel(cluster.coordinator.address, cluster.agents[0]) as channel:
            codes = {m.name: await send_garbage(channel, m.name) for m in SERVICE.methods}
        # every method names the caller's mistake (and counts it), none is an internal error
        assert set(codes.values()) == {S.INVALID_ARGUMENT}, codes
        answer = await s.stub.Heartbeat(pb.HeartbeatRequest(), timeout=10)
        assert answer.server_unix_ms > 0

    cluster.play({"AdvertiseKeys": during_advertise_keys})


# --- rate limiting ----------------------------------------------------------------------------


def test_rate_limit_refuses_a_burst_per_client(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, merged(CONFIG, limits={"rate_per_second": 2}))
    coordinator.start()
    try:

        async def heartbeat(agent: TestAgent) -> tuple[grpc.StatusCode, str]:
            try:
                await agent.stub.Heartbeat(pb.HeartbeatRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            return S.OK, ""

        async def scenario() -> None:
            quick, other = await TestAgent.many(coordinator, tmp_path, 2)
            try:
                started = time.monotonic()
                burst = await asyncio.gather(*(heartbeat(quick) for _ in range(20)))
                elapsed = time.monotonic() - started
                accepted = [code for code, _ in burst].count(S.OK)
                refused = [details for code, details in burst if code is S.RESOURCE_EXHAUSTED]
                assert accepted + len(refused) == 20, burst
                # the bucket holds 4 seconds' worth (8 calls) and refills at 2 calls a second
                assert 8 <= accepted <= 8 + 2 * elapsed + 1, (burst, elapsed)
                assert refused
                assert set(refused) == {"too many requests; slow down"}
                # the limit is per client; the refill is tested on a fake clock
                # (tests/coordinator/test_rate_limit.py)
                assert await heartbeat(other) == (S.OK, "")
            finally:
                await quick.close()
                await other.close()

        asyncio.run(scenario())
    finally:
        coordinator.stop()

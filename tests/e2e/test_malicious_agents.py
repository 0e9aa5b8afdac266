"""Malicious agents over real gRPC and TLS: the honest clients' round still commits.

Each test plays a round of four enrolled agents against a real coordinator process. One of
them (or an enrolled outsider, or someone holding another client's certificate) misbehaves
from a ``HookedSession`` hook, at a known moment of the round; a second, honest agent may
hold the phase open meanwhile, so the misbehaviour meets the phase it aims at. Then the
test checks the exact status the coordinator answered, and that the round committed the
model before it plus the plain mean of exactly the honest survivors' known updates.

1. A correctly signed advert with an X25519 key of small order: INVALID_ARGUMENT naming
   the small order, the sender is dropped ("invalid_message" in the store, in
   ``status --json`` and in the dropouts metric) and the other three commit.
2. A masked-input chunk sent again with other bytes: ALREADY_EXISTS, before and after a
   ``kill -9`` and restart of the coordinator (receipts rebuilt from the store); the
   sender's first, genuine upload is summed.
3. An enrolled agent outside the cohort (it checks in during the round and is told to come
   back) sends a correctly signed advert and a well-sized chunk: PERMISSION_DENIED, and for
   a round it was once assigned, FAILED_PRECONDITION.
4. Another client's certificate (wrong key, another CA, a second certificate from the
   coordinator's CA) is refused at TLS or UNAUTHENTICATED, and a cohort member replaying an
   advert signed by another member is refused without harm to either.

tests/e2e/test_auth.py already checks most of the refusals in 3 and 4 outside rounds or
with unsigned junk (a never-checking-in outsider on every RPC, forged certificates,
second serials, the client-id header); here they come from agents that look genuine, at
the moment they could do harm, and the point is that the honest round still commits.

One coordinator serves the module; rounds run one after another. The restart test kills
and restarts it, so it runs last.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from coordinator.auth import INSECURE_CLIENT_HEADER
from coordinator.domain import ParticipantStatus, RoundPhase
from coordinator.store.sql import SqlStore, default_sqlite_url
from edge_client.enrollment import Credentials, enroll
from edge_client.session import Outcome, RoundResult, RoundSession
from secure_agg import shamir
from secure_agg.session import commit_self_mask
from secure_agg.signing import advertise_payload, sign
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

from .clients import (
    Hook,
    HookedSession,
    KnownUpdate,
    PlayedRound,
    assert_mean_committed,
    client_certificate,
    connected,
    coordinator_ca,
    expect,
    play_round,
    self_made_ca,
    stream_of,
    tls_channel,
)
from .harness import FAST, Coordinator, TestAgent, merged

S = grpc.StatusCode
ADVERTISE, MASKED = pb.PHASE_ADVERTISE_KEYS, pb.PHASE_MASKED_INPUT
COHORT = 4
CONFIG = merged(
    FAST,
    rounds=100,
    cohort=COHORT,
    # a malicious agent dropped from a round of four leaves three, which still commit
    min_clients=COHORT - 1,
    over_selection=0.0,
    # After the restart test's kill -9, the agents reconnect with backoff; on four busy test
    # workers one missed FAST's 10 s for its consistency signature (seen once). No test here
    # waits for these deadlines: malicious agents are dropped for what they send, at once.
    deadlines={"consistency_check": 30, "unmasking": 30},
)
HOLD = 60.0  # seconds an honest agent holds a phase open at most


# --- the module's coordinator -----------------------------------------------------------------


@dataclass
class Cluster:
    coordinator: Coordinator
    root: Path
    cohort: list[Credentials]  # the four agents of every test round
    outsider: Credentials  # enrolled; in the first round only, never checks in after it
    finished_round: str  # the first round, with the outsider in its cohort

    def play(
        self,
        hooks: Callable[[TestAgent], Mapping[int, Mapping[str, Hook]]],
        *,
        survivors: Sequence[int] = range(COHORT),
    ) -> Played:
        """A round of ``cohort``; agent ``i`` runs ``hooks(outsider)[i]``. It must commit the
        plain mean of the updates of the agents ``survivors``, and only those."""

        async def scenario() -> Played:
            everyone = [*self.cohort, self.outsider]
            async with connected(self.coordinator, everyone, self.root) as agents:
                *cohort, outsider = agents
                return await _play(cohort, hooks(outsider))

        played = asyncio.run(scenario())
        for i, session in enumerate(played.sessions):
            expected = list(played.hooks.get(i, {}))
            assert isinstance(session, HookedSession) == bool(expected)
            if isinstance(session, HookedSession):
                assert session.ran == expected, f"agent {i} ran the hooks {session.ran}"
        honest = PlayedRound(
            round_id=played.round_id,
            results=[played.results[i] for i in survivors],
            updates=[played.updates[i] for i in survivors],
        )
        assert_mean_committed(
            self.coordinator, honest, local_steps=CONFIG["local_steps"], lr=CONFIG["lr"]
        )
        return played

    def store(self) -> SqlStore:
        return SqlStore(default_sqlite_url(self.coordinator.data_dir))

    def round_status(self, round_id: str) -> dict[str, Any]:
        rounds: list[dict[str, Any]] = self.coordinator.status()["rounds"]
        (entry,) = [r for r in rounds if r["round_id"] == round_id]
        return entry


@dataclass
class Played:
    round_id: str
    results: list[RoundResult]
    updates: list[KnownUpdate]
    sessions: list[RoundSession]
    hooks: Mapping[int, Mapping[str, Hook]]


async def _play(agents: Sequence[TestAgent], hooks: Mapping[int, Mapping[str, Hook]]) -> Played:
    """One round with every agent; agent ``i`` is a ``HookedSession`` with ``hooks[i]``."""
    updates = [KnownUpdate() for _ in agents]

    async def one(i: int, agent: TestAgent) -> tuple[RoundSession, RoundResult]:
        assignment = await agent.assignment()
        if i in hooks:
            session: RoundSession = agent.session(
                assignment, updates[i], HookedSession, hooks=hooks[i]
            )
        else:
            session = agent.session(assignment, updates[i])
        return session, await session.run()

    played = await asyncio.gather(*(one(i, a) for i, a in enumerate(agents)))
    round_ids = {session.round_id for session, _ in played}
    assert len(round_ids) == 1, f"the agents were put in different rounds: {round_ids}"
    return Played(
        round_id=round_ids.pop(),
        results=[result for _, result in played],
        updates=updates,
        sessions=[session for session, _ in played],
        hooks=hooks,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("malicious")
    coordinator = Coordinator(root, CONFIG)
    coordinator.start()
    try:
        tokens = coordinator.tokens(COHORT + 1)

        async def setup() -> tuple[list[Credentials], str]:
            credentials = [
                await enroll(
                    address=coordinator.enroll_address,
                    ca_certificate_pem=coordinator.ca_pem,
                    token=token,
                    label=f"agent-{i}",
                )
                for i, token in enumerate(tokens)
            ]
            # the first round's cohort holds the outsider (the last one) and not agent 0
            async with connected(coordinator, credentials[1:], root) as agents:
                first = await play_round(agents)
            first.assert_committed()
            return credentials, first.round_id

        credentials, finished = asyncio.run(setup())
        yield Cluster(
            coordinator=coordinator,
            root=root,
            cohort=credentials[:COHORT],
            outsider=credentials[COHORT],
            finished_round=finished,
        )
    finally:
        coordinator.stop()


# --- messages a malicious agent builds --------------------------------------------------------


def _x25519_public() -> bytes:
    return (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def signed_advert(
    identity: Ed25519PrivateKey, round_id: str, secagg_id: int, **keys: bytes
) -> pb.AdvertiseKeysRequest:
    """An advert as the real client makes it (fresh X25519 keys unless ``keys`` says which,
    a commitment to a fresh self-mask secret), signed by ``identity`` over the real payload
    for ``secagg_id``."""
    encryption_key = keys.get("encryption_key", _x25519_public())
    masking_key = keys.get("masking_key", _x25519_public())
    commitment = commit_self_mask(
        round_id=round_id, client_id=secagg_id, secret=secrets.randbelow(shamir.PRIME)
    )
    payload = advertise_payload(
        round_id=round_id,
        client_id=secagg_id,
        encryption_key=encryption_key,
        masking_key=masking_key,
        self_mask_commitment=commitment,
    )
    return pb.AdvertiseKeysRequest(
        round_id=round_id,
        phase=ADVERTISE,
        encryption_key=encryption_key,
        masking_key=masking_key,
        self_mask_commitment=commitment,
        signature=sign(identity, payload),
    )


def _chunk(round_id: str, index: int, values: bytes) -> pb.MaskedInputChunk:
    return pb.MaskedInputChunk(round_id=round_id, phase=MASKED, chunk_index=index, values=values)


def _upload(
    stub: pb_grpc.EdgeServiceStub, *chunks: pb.MaskedInputChunk, **kwargs: Any
) -> Awaitable[pb.UploadStatus]:
    call: Awaitable[pb.UploadStatus] = stub.UploadMaskedInput(
        stream_of(*chunks), timeout=30, **kwargs
    )
    return call


def _flipped(values: bytes) -> bytes:
    """The same bytes but the last bit: a chunk that differs as little as one can."""
    return values[:-1] + bytes([values[-1] ^ 1])


def _hold_until(released: asyncio.Event) -> Hook:
    """A hook that keeps its (honest) agent pending, so the phase stays open, until
    ``released``; then the agent answers the phase as usual."""

    async def hold(s: HookedSession) -> None:
        await asyncio.wait_for(released.wait(), timeout=HOLD)

    return hold


def _note_adverts(cluster: Cluster, into: dict[int, Any]) -> Hook:
    """A hook for ShareKeys: the adverts the store holds once the keys phase has closed
    (they are deleted with the round's other protocol records when it ends)."""

    async def note(s: HookedSession) -> None:
        def read() -> None:
            store = cluster.store()
            try:
                into.update({r.secagg_id: r for r in store.list_advertised_keys(s.round_id)})
            finally:
                store.close()

        await asyncio.to_thread(read)

    return note


_DROPOUTS = re.compile(
    r'^fedadamw_round_dropouts_total\{phase="advertise_keys",reason="invalid_message"\} (\S+)$',
    re.MULTILINE,
)


def _invalid_message_dropouts(coordinator: Coordinator) -> float:
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "# TYPE fedadamw_round_dropouts_total counter" in text
    found = _DROPOUTS.search(text)
    return float(found.group(1)) if found else 0.0


# --- 1. a small-order key ---------------------------------------------------------------------

SMALL_ORDER = {
    "masking_key": bytes(32),  # the all-zero point
    "encryption_key": (1).to_bytes(32, "little"),  # u = 1, a point of order 4
}


@pytest.mark.parametrize("which", sorted(SMALL_ORDER))
def test_a_signed_small_order_key_drops_its_sender_and_the_rest_commit(
    cluster: Cluster, which: str
) -> None:
    malicious = cluster.cohort[0]
    before = _invalid_message_dropouts(cluster.coordinator)
    released = asyncio.Event()
    refused: list[str] = []

    async def advertise_a_small_order_key(s: HookedSession) -> None:
        try:
            assert s.config is not None
            me, rid = s.config.secagg_id, s.round_id
            advert = signed_advert(s.identity_key, rid, me, **{which: SMALL_ORDER[which]})
            details = await expect(S.INVALID_ARGUMENT, s.stub.AdvertiseKeys(advert, timeout=10))
            assert details.startswith("the secure-aggregation message was refused"), details
            assert "small order" in details, details
            refused.append(details)
            # it is out of the round: a good advert now is too late, and so is any read
            good = signed_advert(s.identity_key, rid, me)
            details = await expect(S.PERMISSION_DENIED, s.stub.AdvertiseKeys(good, timeout=10))
            assert "was dropped from round" in details, details
            ref = pb.RoundRef(round_id=rid)
            await expect(S.PERMISSION_DENIED, s.stub.GetRoundConfig(ref, timeout=10))
            # the drop is counted at once, by phase and reason
            after = await asyncio.to_thread(_invalid_message_dropouts, cluster.coordinator)
            assert after == before + 1
        finally:
            released.set()

    adverts: dict[int, object] = {}
    played = cluster.play(
        lambda outsider: {
            0: {"AdvertiseKeys": advertise_a_small_order_key},
            1: {"AdvertiseKeys": _hold_until(released)},
            2: {"ShareKeys": _note_adverts(cluster, adverts)},
        },
        survivors=[1, 2, 3],
    )
    assert refused
    # the malicious agent's own session then found itself out of the round: refused as
    # dropped, or as too late if the phase had closed meanwhile
    dropped = played.results[0]
    assert dropped.outcome is Outcome.DROPPED, dropped
    assert dropped.reason.startswith(("PERMISSION_DENIED", "FAILED_PRECONDITION")), dropped
    store = cluster.store()
    try:
        participants = {p.client_id: p for p in store.list_participants(played.round_id)}
    finally:
        store.close()
    advertised = set(adverts)
    bad = participants[malicious.client_id]
    assert bad.status is ParticipantStatus.DROPPED
    assert bad.dropped_in is RoundPhase.ADVERTISE_KEYS
    assert bad.drop_reason == "invalid_message"
    assert bad.secagg_id not in advertised  # its key never reached a neighbour
    assert advertised == {p.secagg_id for p in participants.values()} - {bad.secagg_id}
    entry = cluster.round_status(played.round_id)
    assert entry["outcome"] == "committed"
    assert entry["cohort"] == COHORT
    assert entry["survivors"] == COHORT - 1
    assert entry["dropouts"] == {"advertise_keys": 1}
    assert _invalid_message_dropouts(cluster.coordinator) == before + 1


# --- 3. an agent outside the cohort -----------------------------------------------------------


def test_an_agent_outside_the_cohort_is_refused_and_the_round_commits(cluster: Cluster) -> None:
    attempts: list[str] = []

    def hooks(outsider: TestAgent) -> dict[int, dict[str, Hook]]:
        identity = outsider.credentials.identity_key

        async def during_advertise_keys(s: HookedSession) -> None:
            assert s.config is not None
            rid = s.round_id
            # it checks in while the round runs: the round was selected without it
            answer = await outsider.stub.CheckIn(
                pb.CheckInRequest(task="digits-cnn", wait_seconds=1), timeout=10
            )
            assert answer.WhichOneof("answer") == "retry_after_seconds", answer
            # an advert signed with its own enrolled key over the real payload, even for a
            # secagg id the round uses: refused for who sends it
            for secagg_id in (s.config.secagg_id, COHORT + 1):
                advert = signed_advert(identity, rid, secagg_id)
                details = await expect(
                    S.PERMISSION_DENIED, outsider.stub.AdvertiseKeys(advert, timeout=10)
                )
                assert details.startswith("not a participant of the round"), details
                attempts.append(f"AdvertiseKeys as {secagg_id}")
            await expect(
                S.PERMISSION_DENIED,
                outsider.stub.GetRoundConfig(pb.RoundRef(round_id=rid), timeout=10),
            )
            # the round it was assigned before is over
            old = signed_advert(identity, cluster.finished_round, 1)
            details = await expect(
                S.FAILED_PRECONDITION, outsider.stub.AdvertiseKeys(old, timeout=10)
            )
            assert "is not the open round" in details, details
            attempts.append("AdvertiseKeys for its old round")

        async def during_masked_input(s: HookedSession) -> None:
            rid = s.round_id
            # a chunk of exactly the right size (a copy of this agent's own first chunk)
            details = await expect(
                S.PERMISSION_DENIED, _upload(outsider.stub, _chunk(rid, 0, s.chunk_bytes(0)))
            )
            assert details.startswith("not a participant of the round"), details
            await expect(
                S.PERMISSION_DENIED,
                outsider.stub.GetUploadStatus(pb.RoundRef(round_id=rid), timeout=10),
            )
            details = await expect(
                S.FAILED_PRECONDITION,
                _upload(outsider.stub, _chunk(cluster.finished_round, 0, s.chunk_bytes(0))),
            )
            assert "is not the open round" in details, details
            attempts.append("UploadMaskedInput")
            # the hooked agent's own receipts are untouched by any of it
            status = await s.stub.GetUploadStatus(pb.RoundRef(round_id=rid), timeout=10)
            assert list(status.received_chunks) == []

        return {
            0: {"AdvertiseKeys": during_advertise_keys, "UploadMaskedInput": during_masked_input}
        }

    played = cluster.play(hooks)
    assert attempts == [
        f"AdvertiseKeys as {played.sessions[0].assignment.secagg_id}",
        f"AdvertiseKeys as {COHORT + 1}",
        "AdvertiseKeys for its old round",
        "UploadMaskedInput",
    ]
    store = cluster.store()
    try:
        participants = store.list_participants(played.round_id)
    finally:
        store.close()
    assert {p.client_id for p in participants} == {c.client_id for c in cluster.cohort}
    assert cluster.outsider.client_id not in {p.client_id for p in participants}
    assert cluster.round_status(played.round_id)["dropouts"] == {}


# --- 4. another client's certificate ----------------------------------------------------------


def test_another_clients_certificate_or_advert_does_not_harm_the_round(cluster: Cluster) -> None:
    coordinator = cluster.coordinator
    victim, member = cluster.cohort[0], cluster.cohort[1]
    outcomes: dict[str, grpc.StatusCode] = {}
    stolen_adverts: list[pb.AdvertiseKeysRequest] = []

    def hooks(outsider: TestAgent) -> dict[int, dict[str, Hook]]:
        async def during_advertise_keys(s: HookedSession) -> None:
            assert s.config is not None
            rid = s.round_id
            # the advert an attacker would love to plant: the victim's own, signed by the
            # victim for its secagg id (a stolen message, or one seen on the wire)
            stolen = signed_advert(victim.identity_key, rid, s.config.secagg_id)
            stolen_adverts.append(stolen)
            forger = self_made_ca()
            ca = coordinator_ca(coordinator)
            impostors = {
                # the victim's certificate with a key that is not the victim's: TLS makes
                # the client prove it holds the certificate's key, and gRPC's TLS stack does
                # not even start that handshake (no connection reaches the coordinator)
                "victim's certificate, the outsider's key": (
                    outsider.credentials.tls_key_pem,
                    victim.certificate_pem,
                    S.UNAVAILABLE,
                ),
                # a certificate naming the victim from a CA this coordinator does not trust
                "victim's name, another CA": (
                    *client_certificate(forger, victim.client_id),
                    S.UNAVAILABLE,
                ),
                # from the coordinator's own CA (a leaked CA key), but not the certificate
                # the victim was issued at enrollment
                "victim's name, a second certificate": (
                    *client_certificate(ca, victim.client_id),
                    S.UNAUTHENTICATED,
                ),
            }
            for name, (key_pem, cert_pem, code) in impostors.items():
                async with tls_channel(
                    coordinator.address,
                    ca_pem=coordinator.ca_pem,
                    key_pem=key_pem,
                    cert_pem=cert_pem,
                ) as channel:
                    stub = pb_grpc.EdgeServiceStub(channel)
                    await expect(code, stub.AdvertiseKeys(stolen, timeout=5))
                    await expect(code, stub.GetRoundConfig(pb.RoundRef(round_id=rid), timeout=5))
                outcomes[name] = code
            # an enrolled agent outside the round sends it on its own channel, claiming the
            # victim's id in the metadata (honoured only without TLS)
            spoof = ((INSECURE_CLIENT_HEADER, str(victim.client_id)),)
            details = await expect(
                S.PERMISSION_DENIED,
                outsider.stub.AdvertiseKeys(stolen, timeout=10, metadata=spoof),
            )
            assert details.startswith("not a participant of the round"), details
            outcomes["outsider replays it"] = S.PERMISSION_DENIED
            # a member of the round replays it as its own: the coordinator checks it against
            # that member's identity and secagg id, refuses it, and keeps the member
            async with connected(coordinator, [member], cluster.root) as (other,):
                details = await expect(
                    S.INVALID_ARGUMENT,
                    other.stub.AdvertiseKeys(stolen, timeout=10, metadata=spoof),
                )
                assert details.startswith("the secure-aggregation message was refused"), details
                config = await other.stub.GetRoundConfig(pb.RoundRef(round_id=rid), timeout=10)
                assert config.secagg_id != s.config.secagg_id
            outcomes["member replays it"] = S.INVALID_ARGUMENT
            # the victim itself was not touched: its stolen advert is not in the round
            config = await s.stub.GetRoundConfig(pb.RoundRef(round_id=rid), timeout=10)
            assert config.phase == ADVERTISE

        return {
            0: {"AdvertiseKeys": during_advertise_keys},
            2: {"ShareKeys": _note_adverts(cluster, noted)},
        }

    noted: dict[int, Any] = {}
    played = cluster.play(hooks)
    assert len(outcomes) == 5, outcomes
    # the advert stored for the victim is the one its own session sent, not the stolen one
    store = cluster.store()
    try:
        participants = {p.client_id: p for p in store.list_participants(played.round_id)}
    finally:
        store.close()
    adverts = noted
    assert all(p.status is not ParticipantStatus.DROPPED for p in participants.values())
    assert len(adverts) == COHORT
    (stolen,) = stolen_adverts
    kept = adverts[participants[victim.client_id].secagg_id]
    assert kept.masking_key != stolen.masking_key
    assert kept.signature != stolen.signature
    assert stolen.masking_key not in {r.masking_key for r in adverts.values()}


# --- 2. a chunk sent again with other bytes -----------------------------------------------------


def _resend_hooks(cluster: Cluster, *, restart: bool) -> dict[int, dict[str, Hook]]:
    """Agent 0 uploads its whole masked input, then sends chunks again with other bytes
    (around a ``kill -9`` and restart of the coordinator if ``restart``); agent 1 holds the
    phase open meanwhile."""
    released = asyncio.Event()

    async def upload_then_resend(s: HookedSession) -> None:
        try:
            assert s.config is not None
            stub, rid = s.stub, s.round_id
            total = s.config.total_chunks
            assert total >= 2, "the layout must span several chunks for this test"
            genuine = [s.chunk_bytes(i) for i in range(total)]
            status = await _upload(stub, *(_chunk(rid, i, genuine[i]) for i in range(total)))
            assert status.complete
            assert list(status.received_chunks) == list(range(total))

            async def resend(**kwargs: Any) -> None:
                for index in (0, total - 1):
                    details = await expect(
                        S.ALREADY_EXISTS,
                        _upload(stub, _chunk(rid, index, _flipped(genuine[index])), **kwargs),
                    )
                    assert details.startswith("conflicts with what was received before"), details
                    assert f"chunk {index} was already received with other bytes" in details
                # the same bytes again are acknowledged alike
                again = await _upload(stub, _chunk(rid, 0, genuine[0]), **kwargs)
                assert again == status

            await resend()
            if restart:
                await asyncio.to_thread(cluster.coordinator.kill)
                await asyncio.to_thread(cluster.coordinator.start)
                # the channel reconnects; wait for it rather than fail fast meanwhile
                await resend(wait_for_ready=True)
                progress = await stub.GetUploadStatus(
                    pb.RoundRef(round_id=rid), timeout=30, wait_for_ready=True
                )
                assert progress.complete
                assert progress.phase == MASKED
        finally:
            released.set()

    return {
        0: {"UploadMaskedInput": upload_then_resend},
        1: {"UploadMaskedInput": _hold_until(released)},
    }


def test_a_chunk_sent_again_with_other_bytes_conflicts_and_the_round_commits(
    cluster: Cluster,
) -> None:
    played = cluster.play(lambda outsider: _resend_hooks(cluster, restart=False))
    # the first, genuine upload is the one summed: all four survive with their own deltas
    assert played.results[0].outcome is Outcome.COMMITTED
    assert cluster.round_status(played.round_id)["survivors"] == COHORT


def test_the_conflict_survives_a_restart_of_the_coordinator(cluster: Cluster) -> None:
    """In a test of its own, last: it kills the module's coordinator and starts it again."""
    starts = cluster.coordinator.starts
    played = cluster.play(lambda outsider: _resend_hooks(cluster, restart=True))
    assert cluster.coordinator.starts == starts + 1
    resumed = rf"resumed round \d+ \({played.round_id}\) in phase masked_input"
    assert re.search(resumed, cluster.coordinator.log()), cluster.coordinator.log()[-3000:]
    entry = cluster.round_status(played.round_id)
    assert entry["survivors"] == COHORT
    assert entry["dropouts"] == {}
    # inputs freed after the round: the driver removes them just after it tells the agents
    spool = cluster.coordinator.data_dir / "spool"
    deadline = time.monotonic() + 30
    while spool.exists() and any(spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not spool.exists() or not any(spool.iterdir()), list(spool.iterdir())

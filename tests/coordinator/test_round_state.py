"""The pure round state (``coordinator.round_state``), phase by phase, in process.

Real ``secure_agg`` clients answer the messages the state produces (``StateRound`` in
``roundkit``); records go through the wire and ``coordinator.serde`` as the servicer parses
them. Each of the five phases is run with every participant answering, with dropouts the
threshold tolerates, with too many dropouts, to its deadline, with a store error, and
through a restart (the records written to a real SQLite store and spool, then ``replay``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.blobs import InputSpool
from coordinator.domain import NEXT_PHASE, PHASE_ORDER, ParticipantStatus, RoundPhase
from coordinator.errors import CoordinatorError, ErrorCode, StoreError
from coordinator.listener import ObservingListener
from coordinator.metrics import Metrics
from coordinator.reasons import Dropped, RoundAbortReason, stored_drops
from coordinator.round_state import Abort, Advance, Commit, Rebuild, RoundState
from coordinator.store.sql import SqlStore
from secure_agg import AbortReason, AdvertiseKeys, DropReason, sum_error_bound
from secure_agg import signing as sa_signing
from tests.coordinator.roundkit import (
    Clock,
    FailingStore,
    StateRound,
    migrated_template,
    open_sqlite,
    small_config,
)

NO_RESPONSE = Dropped(DropReason.NO_RESPONSE)
SECURE_PHASES = list(PHASE_ORDER)
ADVANCING = [p for p in PHASE_ORDER if p is not RoundPhase.UNMASKING]
# The store write that keeps each phase's accepted message (what ``store_failed`` follows).
WRITE_OF_PHASE = {
    RoundPhase.ADVERTISE_KEYS: "add_advertised_keys",
    RoundPhase.SHARE_KEYS: "add_shares",
    RoundPhase.MASKED_INPUT: "mark_input_complete",
    RoundPhase.CONSISTENCY_CHECK: "add_consistency_signature",
    RoundPhase.UNMASKING: "add_unmask_response",
}
# A dropout before the masked inputs are summed leaves the dropped input out of the sum;
# one after (consistency check, unmasking) keeps it in: the survivors are U3.
BEFORE_THE_SUM = {RoundPhase.ADVERTISE_KEYS, RoundPhase.SHARE_KEYS, RoundPhase.MASKED_INPUT}


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("round-state-db"))


@pytest.fixture
def store(sqlite_template: Path, tmp_path: Path) -> Iterator[SqlStore]:
    opened, _ = open_sqlite(sqlite_template, tmp_path / "db")
    yield opened
    opened.close()


@pytest.fixture
def spool(tmp_path: Path) -> InputSpool:
    return InputSpool(tmp_path / "spool")


def assert_commits_sum(r: StateRound, commit: object, survivors: set[int]) -> None:
    """The commit's sums are the decoded sum of exactly the survivors' inputs, and that is
    their plain float sum to within quantization."""
    assert isinstance(commit, Commit), commit
    sums, expected = commit.sums, r.expected(survivors)
    assert sums.survivors == len(survivors)
    np.testing.assert_array_equal(sums.delta, expected["delta"])
    assert sums.second_moment is not None
    np.testing.assert_array_equal(sums.second_moment, expected["second_moment"])
    assert sums.weight == pytest.approx(float(len(survivors)))
    assert sums.clipped == 0.0
    assert sums.samples == pytest.approx(float(expected["samples"][0]))
    assert sums.train_loss == pytest.approx(float(expected["train_loss"][0]))
    layout = r.settings.layout
    for name in ("delta", "second_moment", "samples", "train_loss"):
        bound = sum_error_bound(layout.segment(name), len(survivors))
        error = np.abs(getattr(sums, name) - r.plain_sum(survivors, name))
        assert float(np.max(error)) <= bound, name


# --- (a) every participant answers ------------------------------------------------------


@pytest.mark.parametrize("phase", SECURE_PHASES)
def test_a_phase_everyone_answers_closes_early_and_goes_on(phase: RoundPhase) -> None:
    r = StateRound.open(small_config())
    r.play_until(phase)
    assert not r.state.ready  # every participant is still pending
    for member in r.alive():
        r.respond(member)
    assert r.state.ready
    assert r.state.aggregation.pending == frozenset()
    decision = r.close()
    if phase is RoundPhase.UNMASKING:
        assert isinstance(decision, Commit)
        assert dict(decision.dropped) == {}
        assert_commits_sum(r, decision, {1, 2, 3, 4, 5})
        return
    assert isinstance(decision, Advance)
    assert (decision.phase, decision.new_phase) == (phase, NEXT_PHASE[phase])
    assert dict(decision.dropped) == {}
    assert decision.alive == 5
    assert decision.deadline == r.clock() + r.settings.phase_duration(decision.new_phase)
    assert r.phase is decision.new_phase
    assert r.state.deadline == decision.deadline
    # what opens the new phase is what a participant that starts watching now sees
    assert set(decision.messages) == {1, 2, 3, 4, 5}
    for secagg, message in decision.messages.items():
        assert r.state.current_event(secagg).message == message
    assert_commits_sum(r, r.play()[-1], {1, 2, 3, 4, 5})


def test_a_plain_aggregation_round_commits_the_plain_sum() -> None:
    r = StateRound.open(small_config(secure=False, min_clients=2))
    assert r.state.session_id == b""
    decisions = r.play(silent={RoundPhase.MASKED_INPUT: {5}})
    assert [type(d).__name__ for d in decisions] == ["Advance"] * 4 + ["Commit"]
    assert [d.phase for d in decisions] == SECURE_PHASES
    masked = decisions[2]
    assert isinstance(masked, Advance)
    assert dict(masked.dropped) == {5: NO_RESPONSE}
    assert masked.alive == 4
    assert_commits_sum(r, decisions[-1], {1, 2, 3, 4})


def test_a_plain_round_keeps_an_input_it_summed_when_its_client_leaves_later() -> None:
    r = StateRound.open(small_config(secure=False, min_clients=2))
    r.play_until(RoundPhase.CONSISTENCY_CHECK)
    assert r.state.complete == {1, 2, 3, 4, 5}
    r.leave(r.members[5])  # may_leave allows it: the phase is not MASKED_INPUT
    commit = r.play()[-1]
    assert isinstance(commit, Commit)
    assert commit.sums.weight == pytest.approx(5.0)  # the input of 5 is in the sum
    assert commit.sums.survivors == 5  # ... so it must be counted (it is counted as 4)


# --- (b) dropouts the threshold tolerates -----------------------------------------------


@pytest.mark.parametrize("phase", SECURE_PHASES)
def test_a_dropout_within_the_threshold_is_named_and_the_round_commits(
    phase: RoundPhase,
) -> None:
    r = StateRound.open(small_config())
    assert r.settings.threshold == 3  # five clients: t + 1 = 4 must stay
    decisions = r.play(silent={phase: {5}})
    at_phase = decisions[PHASE_ORDER.index(phase)]
    assert at_phase.phase is phase
    assert dict(at_phase.dropped) == {5: NO_RESPONSE}
    assert all(dict(d.dropped) == {} for d in decisions if d is not at_phase)
    if isinstance(at_phase, Advance):
        assert at_phase.alive == 4
        assert 5 not in at_phase.messages
    survivors = {1, 2, 3, 4} if phase in BEFORE_THE_SUM else {1, 2, 3, 4, 5}
    assert_commits_sum(r, decisions[-1], survivors)


# --- (c) too few left -------------------------------------------------------------------


@pytest.mark.parametrize("phase", SECURE_PHASES)
def test_fewer_than_t_plus_one_left_aborts_with_too_few_clients(phase: RoundPhase) -> None:
    r = StateRound.open(small_config())
    r.play_until(phase)
    decision = r.play_phase(silent={4, 5})
    assert isinstance(decision, Abort)
    assert decision.phase is phase
    assert decision.reason is RoundAbortReason.TOO_FEW_CLIENTS
    assert dict(decision.dropped) == {4: NO_RESPONSE, 5: NO_RESPONSE}
    assert decision.culprits == ()


@pytest.mark.parametrize("phase", ADVANCING)
def test_fewer_than_min_clients_left_aborts_with_too_few_clients(phase: RoundPhase) -> None:
    # secure aggregation would go on with 4 of 5 (t = 3); min_clients = 5 does not
    r = StateRound.open(small_config(min_clients=5))
    r.play_until(phase)
    decision = r.play_phase(silent={5})
    assert isinstance(decision, Abort)
    assert (decision.phase, decision.reason) == (phase, RoundAbortReason.TOO_FEW_CLIENTS)
    assert dict(decision.dropped) == {5: NO_RESPONSE}


def test_a_plain_round_below_min_clients_aborts() -> None:
    r = StateRound.open(small_config(secure=False, min_clients=2))
    r.play_until(RoundPhase.MASKED_INPUT)
    decision = r.play_phase(silent={2, 3, 4, 5})
    assert isinstance(decision, Abort)
    assert decision.reason is RoundAbortReason.TOO_FEW_CLIENTS
    assert set(decision.dropped) == {2, 3, 4, 5}


# --- (d) the deadline -------------------------------------------------------------------


@pytest.mark.parametrize("phase", SECURE_PHASES)
def test_closing_at_the_deadline_drops_the_pending_ones(phase: RoundPhase) -> None:
    r = StateRound.open(small_config())
    r.play_until(phase)
    started = r.clock()
    for member in r.alive()[:4]:
        r.respond(member)
    assert r.state.aggregation.pending == frozenset({5})
    assert not r.state.ready  # the driver waits for the deadline
    assert r.state.deadline == started + r.settings.phase_duration(phase)
    r.clock.now = r.state.deadline
    decision = r.close()
    assert decision.phase is phase
    assert dict(decision.dropped) == {5: NO_RESPONSE}
    if isinstance(decision, Commit):
        assert_commits_sum(r, decision, {1, 2, 3, 4, 5})
        return
    assert isinstance(decision, Advance)
    assert decision.deadline == r.state.deadline
    assert decision.deadline == r.clock() + r.settings.phase_duration(decision.new_phase)
    # the dropped participant gets nothing more and may not act on the round
    assert r.state.current_event(5).message is None
    with pytest.raises(CoordinatorError, match="dropped") as refused:
        r.state.member(r.members[5].client_id, None)
    assert refused.value.code is ErrorCode.NOT_IN_COHORT
    survivors = {1, 2, 3, 4} if phase in BEFORE_THE_SUM else {1, 2, 3, 4, 5}
    assert_commits_sum(r, r.play()[-1], survivors)


def test_a_half_uploaded_input_is_not_summed_and_its_client_drops_at_the_deadline() -> None:
    r = StateRound.open(small_config())
    r.play_until(RoundPhase.MASKED_INPUT)
    assert r.settings.total_chunks == 4
    for member in r.alive()[:4]:
        r.respond(member)
    r.respond(r.members[5], chunks=[0, 2])
    assert set(r.state.receipts[5]) == {0, 2}
    assert r.state.complete == {1, 2, 3, 4}
    assert not r.state.input_ready(5)
    decision = r.close()
    assert isinstance(decision, Advance)  # not INCOMPLETE_MASKED_INPUT: nothing of it was fed
    assert dict(decision.dropped) == {5: NO_RESPONSE}
    assert_commits_sum(r, r.play()[-1], {1, 2, 3, 4})


# --- (e) an accepted message the store could not keep -----------------------------------


@pytest.mark.parametrize("phase", SECURE_PHASES)
def test_a_message_the_store_could_not_keep_makes_the_close_rebuild(
    phase: RoundPhase, store: SqlStore, spool: InputSpool
) -> None:
    failing = FailingStore(store)
    r = StateRound.open(small_config(), store=failing, spool=spool)
    r.play_until(phase)
    r.respond(r.members[1])
    failing.fail(WRITE_OF_PHASE[phase])
    with pytest.raises(StoreError) as caught:
        r.respond(r.members[2])
    assert caught.value.code is ErrorCode.STORE_UNAVAILABLE
    assert r.state.unstored is ErrorCode.STORE_UNAVAILABLE
    assert r.state.aggregation.pending  # three have not answered ...
    assert r.state.ready  # ... but the phase must close now
    assert not r.state.ready_to_sum
    decision = r.close()
    assert decision == Rebuild(phase, ErrorCode.STORE_UNAVAILABLE)
    assert store.get_round(r.round_id).phase is phase  # nothing moved in the store
    # the store lacks exactly the message memory holds: the rebuilt round still waits for it
    rebuilt = r.replayed()
    assert rebuilt.unstored is None
    assert 2 in rebuilt.aggregation.pending
    assert 1 not in rebuilt.aggregation.pending


@pytest.mark.parametrize("code", [ErrorCode.STORE_UNAVAILABLE, ErrorCode.CONFLICT])
def test_store_failed_wins_over_a_failure_and_keeps_its_code(code: ErrorCode) -> None:
    r = StateRound.open(small_config())
    r.state.fail(RoundAbortReason.INPUT_UNREADABLE)
    r.state.store_failed(code)
    assert r.close() == Rebuild(RoundPhase.ADVERTISE_KEYS, code)


@pytest.mark.parametrize("phase", SECURE_PHASES)
def test_a_failed_round_aborts_at_the_next_close_with_its_reason(phase: RoundPhase) -> None:
    r = StateRound.open(small_config())
    r.play_until(phase)
    r.state.fail(RoundAbortReason.INPUT_UNREADABLE)
    assert r.state.ready
    assert not r.state.ready_to_sum
    assert r.close() == Abort(phase, RoundAbortReason.INPUT_UNREADABLE, {})


# --- (f) a restart: the store replays the same round ------------------------------------


@pytest.mark.parametrize("phase", SECURE_PHASES)
def test_a_restart_replays_the_round_and_it_commits_the_same_sum(
    phase: RoundPhase, store: SqlStore, spool: InputSpool
) -> None:
    """Six clients (t = 3): 6 leaves in advertise_keys (AbortRound, stored as a drop) and 5
    stays silent there (dropped at the close). In ``phase``, 1 and 2 answer (and, in
    masked_input, 3 uploads half its input), then the coordinator restarts."""
    clock = Clock()
    r = StateRound.open(small_config(cohort=6), members=6, store=store, spool=spool, clock=clock)
    assert r.settings.threshold == 3
    r.leave(r.members[6])
    if phase is not RoundPhase.ADVERTISE_KEYS:
        first = r.play_phase(silent={5})
        assert isinstance(first, Advance)
        assert dict(first.dropped) == {5: NO_RESPONSE}
        r.play_until(phase)
    for member in (r.members[1], r.members[2]):
        r.respond(member)
    if phase is RoundPhase.MASKED_INPUT:
        r.respond(r.members[3], chunks=[0, 1])
    before = r.state
    clock.advance(30)
    restart_deadline = clock() + r.settings.phase_duration(phase)
    after = r.replayed(deadline=restart_deadline)

    assert after is not before
    assert after.phase is before.phase is phase
    assert after.aggregation.alive == before.aggregation.alive
    assert after.aggregation.pending == before.aggregation.pending
    assert after.receipts == before.receipts
    assert after.complete == before.complete
    assert after.session_id == before.session_id
    assert after.deadline == restart_deadline
    assert set(after.participants) == set(before.participants)
    for secagg in sorted(before.aggregation.alive):
        assert after.current_event(secagg) == before.current_event(secagg)
    if phase is RoundPhase.MASKED_INPUT:
        assert after.complete == {1, 2}
        assert set(after.receipts[3]) == {0, 1}
    stored = {p.secagg_id: p for p in store.list_participants(r.round_id)}
    assert stored[6].drop_reason == "client_aborted:cancelled"
    assert stored[6].status is ParticipantStatus.DROPPED

    # The agents go on against the rebuilt round; what they had stored is not asked again.
    r.state = after
    if phase is RoundPhase.MASKED_INPUT:
        r.upload(r.members[3])  # the two durable chunks are retries: no new write
        assert set(after.receipts[3]) == {0, 1, 2, 3}
    else:
        r.respond(r.members[3])
    r.respond(r.members[4])
    decision = r.close()
    assert decision.phase is phase
    if phase is RoundPhase.ADVERTISE_KEYS:
        assert dict(decision.dropped) == {5: NO_RESPONSE}
    else:
        assert dict(decision.dropped) == {}
    commit = decision if isinstance(decision, Commit) else r.play()[-1]
    assert_commits_sum(r, commit, {1, 2, 3, 4})
    assert store.get_round(r.round_id).phase is RoundPhase.UNMASKING


def test_replay_without_a_durable_input_fails_so_the_round_cannot_resume(
    store: SqlStore, spool: InputSpool
) -> None:
    r = StateRound.open(small_config(), store=store, spool=spool)
    r.play_until(RoundPhase.CONSISTENCY_CHECK)
    shutil.rmtree(spool.root / r.round_id)  # the spool lost the summed inputs
    with pytest.raises(CoordinatorError) as caught:
        r.replayed()
    # not a store or blob error (the driver would retry it): the driver aborts the round
    assert not isinstance(caught.value, StoreError)
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_an_advert_of_a_small_order_key_drops_its_sender_and_replays_as_a_drop(
    store: SqlStore, spool: InputSpool
) -> None:
    r = StateRound.open(small_config(), store=store, spool=spool)
    bad = r.members[3]
    payload = sa_signing.advertise_payload(
        round_id=r.round_id,
        client_id=bad.secagg_id,
        encryption_key=bytes(32),  # the X25519 point of order 1
        masking_key=bytes(range(32)),
        self_mask_commitment=bytes(32),
    )
    advert = AdvertiseKeys(
        round_id=r.round_id,
        client_id=bad.secagg_id,
        identity_key=bad.public_key,
        encryption_key=bytes(32),
        masking_key=bytes(range(32)),
        self_mask_commitment=bytes(32),
        signature=sa_signing.sign(bad.key, payload),
    )
    with pytest.raises(CoordinatorError) as caught:
        r.submit(bad, advert)
    assert caught.value.code is ErrorCode.PROTOCOL_VIOLATION
    assert 3 not in r.state.aggregation.alive
    stored = {p.secagg_id: p for p in store.list_participants(r.round_id)}
    assert stored[3].drop_reason == DropReason.INVALID_MESSAGE.value
    assert stored[3].dropped_in is RoundPhase.ADVERTISE_KEYS
    assert 3 not in r.replayed().aggregation.alive
    decisions = r.play()
    assert_commits_sum(r, decisions[-1], {1, 2, 4, 5})


def test_a_refused_message_changes_nothing_and_drops_no_one() -> None:
    r = StateRound.open(small_config())
    member = r.members[1]
    r.respond(member)
    other_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    payload = sa_signing.advertise_payload(
        round_id=r.round_id,
        client_id=1,
        encryption_key=bytes(range(1, 33)),
        masking_key=bytes(range(2, 34)),
        self_mask_commitment=bytes(32),
    )
    forged = AdvertiseKeys(
        round_id=r.round_id,
        client_id=1,
        identity_key=member.public_key,
        encryption_key=bytes(range(1, 33)),
        masking_key=bytes(range(2, 34)),
        self_mask_commitment=bytes(32),
        signature=sa_signing.sign(other_key, payload),
    )
    pending = r.state.aggregation.pending
    with pytest.raises(CoordinatorError) as caught:
        r.submit(member, forged)
    assert caught.value.code is ErrorCode.PROTOCOL_VIOLATION
    assert r.state.aggregation.pending == pending
    assert 1 in r.state.aggregation.alive
    assert_commits_sum(r, r.play()[-1], {1, 2, 3, 4, 5})


# --- requests: membership, phases, chunks, leaving --------------------------------------


def test_member_refuses_strangers_wrong_phases_and_dropped_clients() -> None:
    r = StateRound.open(small_config())
    one = r.members[1]
    assert r.state.member(one.client_id, RoundPhase.ADVERTISE_KEYS).secagg_id == 1
    assert r.state.member(one.client_id, None).secagg_id == 1
    with pytest.raises(CoordinatorError, match="not in round") as stranger:
        r.state.member(999, None)
    assert stranger.value.code is ErrorCode.NOT_IN_COHORT
    with pytest.raises(CoordinatorError, match="advertise_keys, not share_keys") as early:
        r.state.member(one.client_id, RoundPhase.SHARE_KEYS)
    assert early.value.code is ErrorCode.WRONG_PHASE
    r.leave(r.members[5])
    with pytest.raises(CoordinatorError, match="was dropped") as dropped:
        r.state.member(r.members[5].client_id, RoundPhase.ADVERTISE_KEYS)
    assert dropped.value.code is ErrorCode.NOT_IN_COHORT
    r.play_phase()
    with pytest.raises(CoordinatorError) as late:
        r.state.member(one.client_id, RoundPhase.ADVERTISE_KEYS)
    assert late.value.code is ErrorCode.WRONG_PHASE


def test_check_reached_refuses_only_phases_the_round_has_not_reached() -> None:
    r = StateRound.open(small_config())
    r.play_until(RoundPhase.MASKED_INPUT)
    for seen in (None, RoundPhase.ADVERTISE_KEYS, RoundPhase.SHARE_KEYS, RoundPhase.MASKED_INPUT):
        r.state.check_reached(seen)
    for seen in (RoundPhase.CONSISTENCY_CHECK, RoundPhase.UNMASKING, RoundPhase.COMMITTED):
        with pytest.raises(CoordinatorError, match="has not reached") as caught:
            r.state.check_reached(seen)
        assert caught.value.code is ErrorCode.WRONG_PHASE


def test_a_chunk_is_written_once_and_other_bytes_for_it_conflict() -> None:
    r = StateRound.open(small_config())
    assert r.state.chunk_is_new(1, 0, "aa" * 32)
    r.state.chunk_stored(1, 0, "aa" * 32)
    assert not r.state.chunk_is_new(1, 0, "aa" * 32)  # a retry: acknowledged, not written
    with pytest.raises(CoordinatorError, match="other bytes") as caught:
        r.state.chunk_is_new(1, 0, "bb" * 32)
    assert caught.value.code is ErrorCode.CONFLICT
    assert r.state.receipts[1] == {0: "aa" * 32}  # the refused bytes changed nothing
    assert r.state.chunk_is_new(1, 1, "bb" * 32)
    assert r.state.chunk_is_new(2, 0, "bb" * 32)
    assert not r.state.input_ready(1)
    r.state.complete.add(1)
    assert not r.state.chunk_is_new(1, 1, "cc" * 32)  # summed: nothing more is written


def test_a_participant_whose_input_is_summed_may_not_leave_in_masked_input() -> None:
    r = StateRound.open(small_config())
    r.play_until(RoundPhase.MASKED_INPUT)
    one, two = r.members[1], r.members[2]
    r.respond(one)
    assert 1 in r.state.complete
    with pytest.raises(CoordinatorError, match="stay") as caught:
        r.leave(one)
    assert caught.value.code is ErrorCode.WRONG_PHASE
    assert 1 in r.state.aggregation.alive
    r.leave(two)  # not summed yet: it may go
    assert 2 not in r.state.aggregation.alive
    for secagg in (3, 4, 5):
        r.respond(r.members[secagg])
    decision = r.close()
    assert isinstance(decision, Advance)
    assert decision.alive == 4
    # later, a summed participant may leave (secure aggregation keeps its input in the sum)
    r.state.may_leave(r.state.member(one.client_id, None), RoundPhase.CONSISTENCY_CHECK)
    assert_commits_sum(r, r.play()[-1], {1, 3, 4, 5})


# --- vocabularies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dropped",
    [Dropped(reason) for reason in DropReason]
    + [Dropped(DropReason.CLIENT_ABORTED, reason) for reason in AbortReason],
    ids=lambda d: d.stored,
)
def test_a_drop_reads_back_as_it_was_stored(dropped: Dropped) -> None:
    assert Dropped.parse(dropped.stored) == dropped
    assert dropped.label == dropped.reason.value
    assert stored_drops({7: dropped}) == {7: dropped.stored}


def test_a_client_reason_this_version_does_not_know_counts_as_cancelled() -> None:
    assert Dropped.client_left("no-such-reason") == Dropped(
        DropReason.CLIENT_ABORTED, AbortReason.CANCELLED
    )
    assert Dropped.client_left("unsafe_threshold").stored == "client_aborted:unsafe_threshold"
    assert Dropped.parse("client_aborted:no-such-reason").client_reason is AbortReason.CANCELLED
    for text in ("gone", "no_response:unsafe_threshold", ""):
        with pytest.raises(ValueError):  # noqa: PT011 - the type is the contract
            Dropped.parse(text)


def test_every_abort_reason_is_its_own_metric_label() -> None:
    metrics = Metrics()
    listener = ObservingListener(metrics)
    r = StateRound.open(small_config())
    values = [reason.value for reason in RoundAbortReason]
    assert len(set(values)) == len(values)
    for reason in RoundAbortReason:
        assert str(reason) == reason.value
        listener.aborted(r.state.round, RoundPhase.SHARE_KEYS, reason)
        sample = metrics.registry.get_sample_value(
            "fedadamw_round_aborts_total", {"phase": "share_keys", "reason": reason.value}
        )
        assert sample == 1.0, reason
    # the secure-aggregation server's reasons keep their values
    for reason in (
        AbortReason.TOO_FEW_CLIENTS,
        AbortReason.TOO_FEW_SHARES,
        AbortReason.INCONSISTENT_SHARES,
        AbortReason.INCOMPLETE_MASKED_INPUT,
        AbortReason.CANCELLED,
    ):
        assert RoundAbortReason.from_secagg(reason).value == reason.value
    for drop in DropReason:
        listener.dropped(RoundPhase.UNMASKING, {1: Dropped(drop)})
        sample = metrics.registry.get_sample_value(
            "fedadamw_round_dropouts_total", {"phase": "unmasking", "reason": drop.value}
        )
        assert sample == 1.0, drop


def test_a_round_opened_in_memory_is_in_advertise_keys_with_nothing_received() -> None:
    r = StateRound.open(small_config())
    state: RoundState = r.state
    assert state.phase is RoundPhase.ADVERTISE_KEYS
    assert state.aggregation.alive == frozenset({1, 2, 3, 4, 5})
    assert state.aggregation.pending == frozenset({1, 2, 3, 4, 5})
    assert state.receipts == {}
    assert state.complete == set()
    assert state.session_id == b""  # known once the keys phase closes
    assert state.secagg_ids == {m.client_id: m.secagg_id for m in r.members.values()}
    assert state.client_ids([5, 1, 99]) == (r.members[1].client_id, r.members[5].client_id)
    assert state.current_event(1).message is None
    r.play_phase()
    assert len(r.state.session_id) == 32

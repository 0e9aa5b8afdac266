"""A server that lies to unmask one client: every attempt is refused before a secret leaks.

The threat model (docs/protocol.md): the server may tell each client a different story
about who survived, forward genuine signatures selectively, lower the threshold for one
client, replay messages from other rounds and sessions, reflect ciphertexts, and ask for
shares before the consistency check. Honest clients must reveal, for any one client, fewer
than t shares of at least one of its two secrets.

The exhaustive part checks the rule itself: for every n <= 12, every graph and threshold
that the library and the client accept, no split of the survivor views gives the server
both secrets of any client.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

import pytest

from secure_agg import (
    AbortReason,
    ClientAbort,
    ClientAborted,
    ClientConsistencyCheck,
    ClientUnmasking,
    ConsistencyRequest,
    ConsistencySignature,
    ErrorCode,
    KeysBroadcast,
    SecAggError,
    SecAggParams,
    ShareKeys,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    build_graph,
    start_client,
)
from secure_agg.threshold import assumed_corrupt_holders, threshold_is_safe

from .harness import Round, make_config, seeded_source

VICTIM = 6


def _to_consistency(threshold: int, *, seed: str = "lying") -> Round:
    """Six honest clients on the complete graph, advanced to the consistency check."""
    config = make_config(delta_length=8, threshold=threshold, degree=None, max_clients=6)
    round_ = Round(config, range(1, 7), seed=seed)
    round_.advertise()
    round_.deliver()
    round_.close()
    round_.deliver()
    round_.mask()
    round_.close()
    return round_


def _split_views(
    round_: Round, told_dead: Iterable[int]
) -> tuple[dict[int, UnmaskResponse], dict[int, AbortReason]]:
    """Tell ``told_dead`` that the victim dropped and everyone else that it survived; forward
    every genuine signature a client could want; return what each client reveals."""
    request = round_.outbox[1]
    assert isinstance(request, ConsistencyRequest)
    everyone = tuple(sorted(round_.clients))
    without_victim = tuple(c for c in everyone if c != VICTIM)
    views = {
        cid: (without_victim, (VICTIM,)) if cid in told_dead else (everyone, ()) for cid in everyone
    }
    signatures: dict[int, ConsistencySignature] = {}
    aborted: dict[int, AbortReason] = {}
    for cid, (alive, dead) in views.items():
        lie = ConsistencyRequest(session_id=request.session_id, alive=alive, dead=dead)
        step = round_.clients[cid].handle(lie)
        round_.clients[cid] = step.state
        if isinstance(step.message, ConsistencySignature):
            signatures[cid] = step.message
        else:
            assert isinstance(step.state, ClientAborted)
            aborted[cid] = step.state.reason
    revealed: dict[int, UnmaskResponse] = {}
    for cid, state in round_.clients.items():
        if not isinstance(state, ClientUnmasking):
            continue
        # The server forwards every signature it has; the client checks them itself.
        forwarded = tuple(
            SurvivorSignature(signer, message.signature)
            for signer, message in sorted(signatures.items())
            if views[signer] == views[cid]
        )
        step = state.handle(UnmaskRequest(session_id=request.session_id, signatures=forwarded))
        round_.clients[cid] = step.state
        if isinstance(step.message, UnmaskResponse):
            revealed[cid] = step.message
        else:
            assert isinstance(step.state, ClientAborted)
            aborted[cid] = step.state.reason
    return revealed, aborted


def _shares_of(owner: int, revealed: dict[int, UnmaskResponse]) -> tuple[int, int]:
    b = sum(any(s.owner == owner for s in r.self_mask_shares) for r in revealed.values())
    s = sum(any(s.owner == owner for s in r.key_shares) for r in revealed.values())
    return b, s


def test_an_unsafe_threshold_is_refused_before_any_share_is_sent() -> None:
    # The attack of the threat model: 6 clients, complete graph, t = 2. Each client holds
    # 5 neighbours' shares, and 2t = 4 is not more than 5: every client refuses.
    config = make_config(delta_length=8, threshold=2, degree=None, max_clients=6)
    round_ = Round(config, range(1, 7), seed="unsafe")
    round_.advertise()
    steps = round_.deliver()
    assert set(steps) == set(range(1, 7))
    for cid, step in steps.items():
        assert isinstance(step.state, ClientAborted)
        assert step.state.reason is AbortReason.UNSAFE_THRESHOLD
        assert step.message == ClientAbort(
            round_id=config.round_id, client_id=cid, reason=AbortReason.UNSAFE_THRESHOLD
        )
    assert not any(isinstance(message, ShareKeys) for message in round_.sent)


def test_a_threshold_lowered_for_one_client_is_refused_by_that_client() -> None:
    # The server hands one client a configuration with t = 2 while the others run t = 4.
    config = make_config(delta_length=8, threshold=4, degree=None, max_clients=6)
    lowered = dataclasses.replace(config, params=dataclasses.replace(config.params, threshold=2))
    round_ = Round(config, range(1, 7), seed="lowered")
    step = start_client(
        lowered,
        client_id=VICTIM,
        identity_key=round_.identities[VICTIM],
        corrupt_rate=0.0,
        source=seeded_source("lowered", VICTIM),
    )
    round_.advertise(drop={VICTIM})
    broadcast = round_.outbox[1]
    assert isinstance(broadcast, KeysBroadcast)
    assert step.message is not None
    shown = KeysBroadcast(round_id=broadcast.round_id, keys=(*broadcast.keys, step.message))
    answer = step.state.handle(shown)
    assert isinstance(answer.state, ClientAborted)
    assert answer.state.reason is AbortReason.UNSAFE_THRESHOLD
    assert isinstance(answer.message, ClientAbort)


def test_the_assumed_corrupt_fraction_raises_the_threshold_a_client_accepts() -> None:
    # t = 3 is safe against no corrupt holder (2t = 6 > 5) but not against one: a client
    # that assumes a corrupt fraction of 0.2 of 6 (one client) refuses it.
    config = make_config(delta_length=8, threshold=3, degree=None, max_clients=6)
    round_ = Round(config, range(1, 7), seed="fraction", corrupt_rate=0.2)
    round_.advertise()
    steps = round_.deliver()
    assert {step.state.reason for step in steps.values()} == {  # type: ignore[attr-defined]
        AbortReason.UNSAFE_THRESHOLD
    }


@pytest.mark.parametrize("told_dead", [{4, 5}, {1, 2, 3}, {1}, {1, 2, 3, 4}, {2, 4}])
def test_different_survivor_lists_for_different_clients_never_unmask_one(
    told_dead: set[int],
) -> None:
    # t = 3 with 5 holders: whatever the split, one side has too few holders, or too few
    # signatures over its view to get an answer at all.
    round_ = _to_consistency(3)
    revealed, aborted = _split_views(round_, told_dead)
    b_shares, s_shares = _shares_of(VICTIM, revealed)
    assert b_shares < 3 or s_shares < 3
    for cid, reason in aborted.items():
        assert reason is AbortReason.TOO_FEW_SIGNATURES, (cid, reason)
    for response in revealed.values():
        b_owners = {s.owner for s in response.self_mask_shares}
        s_owners = {s.owner for s in response.key_shares}
        assert not b_owners & s_owners  # never both shares of one peer


def test_both_shares_of_one_peer_cannot_be_asked_for() -> None:
    round_ = _to_consistency(3)
    request = round_.outbox[1]
    assert isinstance(request, ConsistencyRequest)
    both = ConsistencyRequest(session_id=request.session_id, alive=request.alive, dead=(VICTIM,))
    step = round_.clients[1].handle(both)
    assert isinstance(step.state, ClientAborted)
    assert step.state.reason is AbortReason.ALIVE_DEAD_OVERLAP


def test_unmasking_before_the_consistency_check_reveals_nothing() -> None:
    round_ = _to_consistency(3)
    request = round_.outbox[1]
    assert isinstance(request, ConsistencyRequest)
    state = round_.clients[1]
    assert isinstance(state, ClientConsistencyCheck)
    early = UnmaskRequest(session_id=request.session_id, signatures=())
    with pytest.raises(SecAggError) as caught:
        state.handle(early)
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert round_.clients[1] is state  # unchanged: it still waits for the check


def test_signatures_from_another_session_do_not_count() -> None:
    first = _to_consistency(3, seed="first")
    second = _to_consistency(3, seed="second")
    for round_ in (first, second):
        round_.deliver()
        round_.close()
    request = second.outbox[1]
    assert isinstance(request, UnmaskRequest)
    # Signatures over the first session's survivor set, replayed into the second.
    replayed = first.outbox[1]
    assert isinstance(replayed, UnmaskRequest)
    lie = UnmaskRequest(session_id=request.session_id, signatures=replayed.signatures)
    step = second.clients[1].handle(lie)
    assert isinstance(step.state, ClientAborted)
    assert step.state.reason is AbortReason.BAD_SIGNATURE


def test_an_advert_replayed_from_another_round_is_refused() -> None:
    old = _to_consistency(3)
    config = make_config(
        delta_length=8, threshold=3, degree=None, max_clients=6, round_id="round-2"
    )
    round_ = Round(config, range(1, 7), seed="lying")
    round_.advertise()
    broadcast = round_.outbox[1]
    assert isinstance(broadcast, KeysBroadcast)
    stale = next(entry for entry in old.phase.data.session.keys if entry.client_id == 4)  # type: ignore[attr-defined]
    keys = tuple(
        dataclasses.replace(stale, round_id="round-2") if entry.client_id == 4 else entry
        for entry in broadcast.keys
    )
    step = round_.clients[1].handle(KeysBroadcast(round_id="round-2", keys=keys))
    assert isinstance(step.state, ClientAborted)
    assert step.state.reason is AbortReason.BAD_SIGNATURE


# The rule, exhaustively for small cohorts ------------------------------------------------


def _server_learns(holders: int, threshold: int, corrupt: int) -> bool:
    """Whether some split of ``holders - corrupt`` honest holders into "told alive" and
    "told dead" gives the server ``threshold`` shares of both secrets (``corrupt`` holders
    give both). Every subset is tried; a holder told nothing only removes shares."""
    honest = holders - corrupt
    for told_alive in range(1 << honest):
        b_shares = told_alive.bit_count() + corrupt
        s_shares = honest - told_alive.bit_count() + corrupt
        if b_shares >= threshold and s_shares >= threshold:
            return True
    return False


def _accepted(n: int) -> Iterable[tuple[int | None, int, float]]:
    """Every (degree, threshold, corrupt rate) for n clients that the library accepts."""
    layout = make_config(delta_length=1, threshold=2, degree=None, max_clients=n).params.layout
    degrees: list[int | None] = [None, *range(2, n - 1, 2)]
    for degree, threshold, rate in itertools.product(
        degrees, range(2, n), (0.0, 0.05, 0.1, 0.2, 0.3)
    ):
        try:
            SecAggParams(threshold=threshold, degree=degree, layout=layout)
        except SecAggError:
            continue
        yield degree, threshold, rate


@pytest.mark.parametrize("n", range(3, 13))
def test_no_split_of_survivor_views_unmasks_a_client_for_any_accepted_parameters(n: int) -> None:
    ids = list(range(1, n + 1))
    checked = refused = 0
    for degree, threshold, rate in _accepted(n):
        graph = build_graph(ids, degree=degree, seed=bytes(32))
        for client in ids:
            holders = len(graph.neighbours(client))
            corrupt = assumed_corrupt_holders(clients=n, holders=holders, corrupt_rate=rate)
            safe = threshold_is_safe(threshold, clients=n, holders=holders, corrupt_rate=rate)
            if not safe:
                refused += 1
                # Tight: a refused t <= holders is one the server could really exploit.
                if threshold <= holders:
                    assert _server_learns(holders, threshold, corrupt), (n, degree, threshold)
                continue
            checked += 1
            for actual in range(corrupt + 1):
                assert not _server_learns(holders, threshold, actual), (
                    n,
                    degree,
                    threshold,
                    rate,
                    actual,
                )
    assert checked

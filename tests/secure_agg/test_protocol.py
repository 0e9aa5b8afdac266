"""Whole rounds: exact sums under dropouts at every phase, and the server's contracts."""

from __future__ import annotations

import pickle
import random
import tracemalloc
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_agg import (
    AbortReason,
    AdvertiseKeys,
    ClientAbort,
    ClientAborted,
    ClientCompleted,
    ClientMaskedInput,
    ConsistencyRequest,
    DropReason,
    ErrorCode,
    MaskedInput,
    MaskedInputChunk,
    Phase,
    ReceiveOutcome,
    SecAggError,
    ServerAborted,
    ServerCompleted,
    ServerMaskedInput,
    ServerPhase,
    ServerShareKeys,
    ShareKeys,
    encode,
    restore_server,
    start_client,
    sum_error_bound,
)

from .harness import Round, make_config, random_values, seeded_source

POINTS = ("before_keys", "after_keys", "after_shares", "after_input", "during_unmask")
DROP_PHASE = {
    "before_keys": Phase.ADVERTISE_KEYS,
    "after_keys": Phase.SHARE_KEYS,
    "after_shares": Phase.MASKED_INPUT,
    "after_input": Phase.CONSISTENCY_CHECK,
    "during_unmask": Phase.UNMASKING,
}


def _check_completed(round_: Round, state: Any, dropped: dict[str, set[int]]) -> None:
    """The sum is exact in the ring and within the quantization bound in float64."""
    assert isinstance(state, ServerCompleted), getattr(state, "reason", state)
    result = state.result
    gone_before_input = dropped["before_keys"] | dropped["after_keys"] | dropped["after_shares"]
    assert set(result.survivors) == set(round_.ids) - gone_before_input
    assert np.array_equal(result.ring_sum, round_.expected_ring_sum(result.survivors))
    decoded = result.decode(round_.layout)
    for segment in round_.layout.segments:
        if segment.is_clip_counter:
            continue
        truth = sum(
            np.clip(round_.values[cid][segment.name], segment.low, segment.high)
            for cid in result.survivors
        )
        bound = sum_error_bound(segment, result.num_clients)
        assert np.all(np.abs(decoded[segment.name] - truth) <= bound), segment.name
    clipped = sum(
        int(np.count_nonzero(np.abs(round_.values[cid]["delta"]) > 1.0)) for cid in result.survivors
    )
    assert decoded["clip_count"][0] == clipped
    for point, clients in dropped.items():
        for cid in clients:
            assert state.dropouts[cid].phase is DROP_PHASE[point]
            assert state.dropouts[cid].reason is DropReason.NO_RESPONSE
    everyone_dropped = set().union(*dropped.values())
    assert set(state.dropouts) == everyone_dropped
    for cid in set(round_.ids) - everyone_dropped:
        assert isinstance(round_.clients[cid], ClientCompleted)


@st.composite
def _scenario(draw: st.DrawFn, complete: bool) -> dict[str, Any]:
    n = draw(st.integers(3 if complete else 4, 60))
    degree = None if complete else 2 * draw(st.integers(1, (n - 2) // 2))
    k = n - 1 if degree is None else degree
    # The least safe t (2t > k, for clients that assume no corrupt peers) and a little more.
    threshold = draw(st.integers(k // 2 + 1, max(2, k // 2 + 1, (3 * k) // 4)))
    budget = k - threshold
    victims = draw(st.lists(st.integers(1, n), unique=True, max_size=budget))
    dropped: dict[str, set[int]] = {point: set() for point in POINTS}
    for victim in victims:
        dropped[draw(st.sampled_from(POINTS))].add(victim)
    d = draw(st.integers(1, 64))
    return {
        "n": n,
        "degree": degree,
        "threshold": threshold,
        "dropped": dropped,
        "d": d,
        "ring_bits": draw(st.sampled_from([32, 64])),
        "chunk": draw(st.one_of(st.none(), st.integers(1, d + 8))),
        "seed": draw(st.integers(0, 2**16)),
    }


def _run_scenario(scenario: dict[str, Any]) -> None:
    config = make_config(
        delta_length=scenario["d"],
        threshold=scenario["threshold"],
        degree=scenario["degree"],
        ring_bits=scenario["ring_bits"],
    )
    round_ = Round(config, range(1, scenario["n"] + 1), seed=scenario["seed"])
    dropped = scenario["dropped"]
    state = round_.run(**{point: dropped[point] for point in POINTS}, chunk=scenario["chunk"])
    _check_completed(round_, state, dropped)


_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(scenario=_scenario(complete=True))
def test_exact_sum_complete_graph_with_dropouts(scenario: dict[str, Any]) -> None:
    _run_scenario(scenario)


@_SETTINGS
@given(scenario=_scenario(complete=False))
def test_exact_sum_k_regular_graph_with_dropouts(scenario: dict[str, Any]) -> None:
    _run_scenario(scenario)


@pytest.mark.parametrize(
    ("n", "degree", "threshold", "point"),
    [(3, None, 2, None), (60, None, 30, "after_shares"), (60, 8, 5, "after_keys")]
    + [(8, None, 4, point) for point in POINTS]
    + [(20, 6, 4, point) for point in POINTS],
)
def test_exact_sum_at_each_dropout_point(
    n: int, degree: int | None, threshold: int, point: str | None
) -> None:
    config = make_config(delta_length=16, threshold=threshold, degree=degree)
    round_ = Round(config, range(1, n + 1), seed=point)
    dropped = {p: set() for p in POINTS}
    if point is not None:
        # Two neighbours of client 1 (or any two, in the complete graph) drop at that point.
        dropped[point] = {2, 3} if degree is None else {1, n}
    state = round_.run(**{p: dropped[p] for p in POINTS}, chunk=5)
    _check_completed(round_, state, dropped)


@pytest.mark.parametrize("point", POINTS)
def test_below_threshold_the_round_aborts_cleanly(point: str) -> None:
    config = make_config(delta_length=8, threshold=4, degree=None)
    round_ = Round(config, range(1, 7), seed=point)
    state = round_.run(**{point: {1, 2, 3}})
    assert isinstance(state, ServerAborted)
    assert state.reason in {AbortReason.TOO_FEW_CLIENTS, AbortReason.TOO_FEW_SHARES}
    round_.deliver()  # the RoundAborted notices
    for cid, client in round_.clients.items():
        if cid in {1, 2, 3}:
            continue
        assert isinstance(client, ClientAborted)
        assert client.reason in {AbortReason.SERVER_ABORTED, AbortReason.TOO_FEW_NEIGHBOURS}


def test_any_arrival_order_and_duplicate_deliveries() -> None:
    config = make_config(delta_length=33, threshold=3, degree=4)
    round_ = Round(config, range(1, 13), seed="order")
    outcomes: list[ReceiveOutcome] = []

    def send_twice(message: Any) -> None:
        round_.sent.append(message)
        outcomes.append(round_.phase.receive(message))
        assert round_.phase.receive(message) is ReceiveOutcome.DUPLICATE

    round_.send = send_twice  # type: ignore[method-assign]
    order = random.Random(9)
    round_.advertise()
    for _ in range(2):
        round_.deliver(shuffle=order)
        if not any(isinstance(c, ClientMaskedInput) for c in round_.clients.values()):
            round_.close()
    round_.mask(chunk=4)
    round_.close()
    round_.deliver(shuffle=order)
    round_.close()
    round_.deliver(shuffle=order)
    round_.close()
    assert ReceiveOutcome.INPUT_COMPLETE in outcomes
    _check_completed(round_, round_.server, {p: set() for p in POINTS})


def test_restored_from_persisted_data_at_every_phase() -> None:
    config = make_config(delta_length=10, threshold=3, degree=None)
    round_ = Round(config, range(1, 7), seed="restart")

    def restart() -> None:
        blob = pickle.dumps(round_.phase.data)
        round_.server = restore_server(pickle.loads(blob))

    round_.advertise()
    restart()
    round_.deliver()
    restart()
    round_.close()
    round_.deliver()
    round_.mask(chunk=3)
    restart()
    round_.close()
    restart()
    round_.deliver(drop={6})
    restart()
    round_.close()
    round_.deliver()
    restart()
    round_.close()
    dropped = {p: set() for p in POINTS}
    dropped["after_input"] = {6}
    _check_completed(round_, round_.server, dropped)


def test_message_for_serves_reconnecting_clients_the_same_message() -> None:
    config = make_config(delta_length=4, threshold=3, degree=4)
    round_ = Round(config, range(1, 10), seed="again")
    round_.advertise()
    for _ in range(2):
        phase = round_.phase
        assert isinstance(phase, ServerShareKeys | ServerMaskedInput)
        assert all(phase.message_for(cid) == message for cid, message in round_.outbox.items())
        round_.deliver()
        if isinstance(round_.phase, ServerShareKeys):
            round_.close()
        else:
            break


def test_conflicting_messages_are_refused() -> None:
    config = make_config(delta_length=6, threshold=2, degree=None)
    round_ = Round(config, range(1, 5), seed="conflict")
    first = start_client(
        config,
        client_id=1,
        identity_key=round_.identities[1],
        corrupt_rate=0.0,
        source=seeded_source("one"),
    )
    restarted = start_client(
        config,
        client_id=1,
        identity_key=round_.identities[1],
        corrupt_rate=0.0,
        source=seeded_source("two"),
    )
    assert round_.phase.receive(first.message) is ReceiveOutcome.ACCEPTED  # type: ignore[arg-type]
    # A client that restarts mid-round with fresh keys cannot replace its advert.
    with pytest.raises(SecAggError) as caught:
        round_.phase.receive(restarted.message)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.CONFLICTING_MESSAGE
    round_.advertise(drop={1})
    round_.clients[1] = first.state
    round_.deliver()
    round_.close()
    round_.deliver()
    state = round_.clients[1]
    assert isinstance(state, ClientMaskedInput)
    values = random_values(config, 1, "x")
    masked = state.mask(encode(config.params.layout, values, source=seeded_source("x"))).message
    assert isinstance(masked, MaskedInput)
    head = MaskedInputChunk(masked.session_id, 1, 0, masked.values[:6])
    overlapping = MaskedInputChunk(masked.session_id, 1, 3, masked.values[3:9])
    assert round_.phase.receive(head) is ReceiveOutcome.ACCEPTED
    assert round_.phase.receive(head) is ReceiveOutcome.DUPLICATE
    with pytest.raises(SecAggError) as caught:
        round_.phase.receive(overlapping)
    assert caught.value.code is ErrorCode.CONFLICTING_MESSAGE
    # The same offset and length with other values is a conflict, not a duplicate, and
    # stays one once the phase is rebuilt from its persisted data.
    forged = MaskedInputChunk(masked.session_id, 1, 0, masked.values[:6] + np.uint32(1))
    for phase in (round_.phase, restore_server(round_.phase.data)):  # type: ignore[attr-defined]
        with pytest.raises(SecAggError) as caught:
            phase.receive(forged)
        assert caught.value.code is ErrorCode.CONFLICTING_MESSAGE
        assert phase.receive(head) is ReceiveOutcome.DUPLICATE


def test_unexpected_messages_name_both_sides_and_change_nothing() -> None:
    config = make_config(delta_length=6, threshold=2, degree=None)
    round_ = Round(config, range(1, 5), seed="unexpected")
    round_.advertise()
    advert = next(m for m in round_.sent if isinstance(m, AdvertiseKeys))
    with pytest.raises(SecAggError) as caught:
        round_.phase.receive(advert)
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert "ServerShareKeys" in caught.value.message
    assert "AdvertiseKeys" in caught.value.message
    assert round_.phase.responded == frozenset()
    bogus = ConsistencyRequest(session_id=b"x", alive=(), dead=())
    with pytest.raises(SecAggError) as caught:
        round_.clients[1].handle(bogus)
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert "ClientAdvertiseKeys" in caught.value.message
    assert "ConsistencyRequest" in caught.value.message


def test_bad_messages_raise_and_leave_the_phase_intact() -> None:
    config = make_config(delta_length=6, threshold=3, degree=None)
    round_ = Round(config, range(1, 6), seed="bad")
    server = round_.phase
    advert = start_client(
        config, client_id=1, identity_key=round_.identities[1], source=seeded_source("a")
    ).message
    assert isinstance(advert, AdvertiseKeys)
    cases = [
        (AdvertiseKeys(**{**advert.__dict__, "signature": bytes(64)}), ErrorCode.BAD_SIGNATURE),
        (AdvertiseKeys(**{**advert.__dict__, "client_id": 99}), ErrorCode.INVALID_MESSAGE),
        (AdvertiseKeys(**{**advert.__dict__, "round_id": "old"}), ErrorCode.WRONG_SESSION),
        (  # signed by another client's enrolled key
            AdvertiseKeys(
                **{
                    **advert.__dict__,
                    "identity_key": bytes(round_.identities[2].public_key().public_bytes_raw()),
                }
            ),
            ErrorCode.INVALID_MESSAGE,
        ),
    ]
    for message, code in cases:
        with pytest.raises(SecAggError) as caught:
            server.receive(message)
        assert caught.value.code is code
    assert server.responded == frozenset()
    assert server.receive(advert) is ReceiveOutcome.ACCEPTED
    round_.advertise(drop={1})  # the rest advertise; client 1's advert already counted
    shares = ShareKeys(session_id=b"\x00" * 32, client_id=2, shares=())
    with pytest.raises(SecAggError) as caught:
        round_.phase.receive(shares)
    assert caught.value.code is ErrorCode.WRONG_SESSION


def test_partly_summed_input_aborts_the_round() -> None:
    config = make_config(delta_length=20, threshold=2, degree=None)
    round_ = Round(config, range(1, 5), seed="partial")
    round_.advertise()
    round_.deliver()
    round_.close()
    round_.deliver()
    round_.mask(drop={4})
    state = round_.clients[4]
    assert isinstance(state, ClientMaskedInput)
    values = random_values(config, 4, "p")
    masked = state.mask(encode(config.params.layout, values, source=seeded_source("p"))).message
    assert isinstance(masked, MaskedInput)
    first_chunk = next(masked.chunks(7))
    assert round_.phase.receive(first_chunk) is ReceiveOutcome.ACCEPTED
    assert 4 in round_.phase.pending
    step = round_.phase.close()
    assert isinstance(step.state, ServerAborted)
    assert step.state.reason is AbortReason.INCOMPLETE_MASKED_INPUT


def test_server_memory_is_order_d_whatever_n() -> None:
    peaks = {}
    for n in (6, 24):
        config = make_config(delta_length=50_000, threshold=3, degree=4, moment_length=1)
        round_ = Round(config, range(1, n + 1), seed=n)
        round_.advertise()
        round_.deliver()
        round_.close()
        round_.deliver()
        inputs = []
        for cid, state in sorted(round_.clients.items()):
            assert isinstance(state, ClientMaskedInput)
            values = random_values(config, cid, n)
            step = state.mask(encode(config.params.layout, values, source=seeded_source(cid)))
            inputs.append(step.message)
        phase = round_.phase
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for message in inputs:
            phase.receive(message)  # type: ignore[arg-type]
        peaks[n] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    vector_bytes = (50_000 + 3) * 4
    # Ingest allocates nothing of size d: the running sum was made when the phase opened.
    assert peaks[24] < vector_bytes / 4
    assert peaks[24] < 4 * peaks[6] + 100_000


def test_client_abort_is_recorded_with_its_reason() -> None:
    config = make_config(delta_length=6, threshold=3, degree=None)
    round_ = Round(config, range(1, 6), seed="abort")
    round_.advertise()
    notice = ClientAbort(round_id=config.round_id, client_id=3, reason=AbortReason.BAD_SIGNATURE)
    assert round_.phase.receive(notice) is ReceiveOutcome.ACCEPTED
    assert round_.phase.receive(notice) is ReceiveOutcome.DUPLICATE
    assert 3 not in round_.phase.alive
    round_.deliver(drop={3})
    assert round_.phase.pending == frozenset()
    round_.close()
    assert 3 not in round_.outbox
    dropout = round_.phase.dropouts[3]
    assert (dropout.phase, dropout.reason, dropout.client_reason) == (
        Phase.SHARE_KEYS,
        DropReason.CLIENT_ABORTED,
        AbortReason.BAD_SIGNATURE,
    )


def test_coordinator_abort_tells_every_alive_client() -> None:
    config = make_config(delta_length=6, threshold=3, degree=None)
    round_ = Round(config, range(1, 6), seed="cancel")
    round_.advertise()
    step = round_.phase.abort()
    assert isinstance(step.state, ServerAborted)
    assert step.state.reason is AbortReason.CANCELLED
    assert step.state.during is Phase.SHARE_KEYS
    assert set(step.messages) == set(range(1, 6))
    round_.server, round_.outbox = step.state, step.messages
    round_.deliver()
    assert all(
        isinstance(c, ClientAborted) and c.reason is AbortReason.SERVER_ABORTED
        for c in round_.clients.values()
    )
    with pytest.raises(SecAggError) as caught:
        round_.server.receive(ClientAbort(config.round_id, 1, AbortReason.SERVER_ABORTED))
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE


def _holds(obj: object, kind: type, depth: int = 0) -> bool:
    """Whether ``obj`` reaches an instance of ``kind`` through attributes and containers."""
    if isinstance(obj, kind):
        return True
    if depth > 4:
        return False
    if isinstance(obj, dict):
        return any(_holds(v, kind, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple | set | frozenset):
        return any(_holds(v, kind, depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return any(_holds(v, kind, depth + 1) for v in vars(obj).values())
    return False


def test_each_phase_erases_key_material_it_no_longer_needs() -> None:
    config = make_config(delta_length=6, threshold=2, degree=None)
    round_ = Round(config, range(1, 5), seed="erase")
    round_.advertise()
    assert _holds(round_.clients[1], X25519PrivateKey)
    round_.deliver()  # keys agreed, shares sent
    client = round_.clients[1]
    assert not _holds(client, X25519PrivateKey)
    assert {"_share_keys", "_mask_seeds", "_self_seed"} <= set(vars(client))
    round_.close()
    round_.deliver()  # shares opened
    client = round_.clients[1]
    assert "_share_keys" not in vars(client)
    round_.mask()
    client = round_.clients[1]
    assert not {"_mask_seeds", "_self_seed"} & set(vars(client))
    assert "_received" in vars(client)
    round_.close()
    assert isinstance(round_.phase, ServerPhase)
    assert "shares" not in vars(round_.phase.data)  # ciphertexts dropped after routing
    round_.deliver()
    round_.close()
    round_.deliver()
    round_.close()
    assert isinstance(round_.server, ServerCompleted)
    assert set(vars(round_.server)) == {"result", "dropouts"}
    for client in round_.clients.values():
        assert isinstance(client, ClientCompleted)
        assert set(vars(client)) == {"_identity", "session_id"}

"""The Harary neighbour graph and the (k, t) parameter finder."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import pytest

from secure_agg import ErrorCode, GraphParameters, SecAggError, build_graph, choose_parameters
from secure_agg.graph_params import (
    CORRECTNESS_BITS,
    REFERENCE_TABLE,
    SECURITY_BITS,
    _choose,
)
from secure_agg.threshold import required_threshold, threshold_is_safe


def _connected(clients: set[int], neighbours: dict[int, frozenset[int]]) -> bool:
    start = next(iter(clients))
    seen, frontier = {start}, [start]
    while frontier:
        for peer in neighbours[frontier.pop()] & clients:
            if peer not in seen:
                seen.add(peer)
                frontier.append(peer)
    return seen == clients


@pytest.mark.parametrize(("n", "degree"), [(5, 2), (10, 4), (11, 8), (60, 8), (200, 16)])
def test_harary_graph_is_regular_symmetric_and_connected(n: int, degree: int) -> None:
    ids = list(range(100, 100 + n))
    graph = build_graph(ids, degree=degree, seed=b"s" * 32)
    assert not graph.is_complete
    adjacency = {client: graph.neighbours(client) for client in ids}
    for client, peers in adjacency.items():
        assert len(peers) == degree
        assert client not in peers
        assert all(client in adjacency[peer] for peer in peers)
    assert _connected(set(ids), adjacency)
    # Removing k/2 - 1 consecutive clients on the circle never disconnects it.
    order = graph.order
    removed = set(order[: degree // 2 - 1]) if degree > 2 else set()
    assert _connected(set(ids) - removed, adjacency)


def test_graph_depends_on_the_seed_only_not_on_input_order() -> None:
    ids = list(range(1, 41))
    first = build_graph(ids, degree=6, seed=b"a" * 32)
    again = build_graph(reversed(ids), degree=6, seed=b"a" * 32)
    other = build_graph(ids, degree=6, seed=b"b" * 32)
    assert first == again
    assert first.order != other.order
    assert sorted(first.order) == ids


@pytest.mark.parametrize(("n", "degree"), [(4, None), (6, 4), (6, 5), (6, 12)])
def test_complete_graph_when_asked_or_when_degree_reaches_n_minus_one(
    n: int, degree: int | None
) -> None:
    ids = list(range(1, n + 1))
    graph = build_graph(ids, degree=degree, seed=bytes(32))
    if degree is None or degree >= n - 1:
        assert graph.is_complete
        assert all(graph.neighbours(c) == frozenset(ids) - {c} for c in ids)
    else:
        assert all(len(graph.neighbours(c)) == degree for c in ids)


@pytest.mark.parametrize("degree", [3, 0, -2])
def test_bad_degrees_are_refused(degree: int) -> None:
    with pytest.raises(SecAggError) as caught:
        build_graph(range(1, 20), degree=degree, seed=bytes(32))
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS


def test_reference_table_is_what_the_finder_computes() -> None:
    assert len(REFERENCE_TABLE) == 11 * 4 * 4
    for (n, dropout, corrupt), (degree, threshold) in REFERENCE_TABLE.items():
        found = choose_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt)
        assert (found.degree, found.threshold) == (degree, threshold), (n, dropout, corrupt)


def test_found_parameters_satisfy_the_documented_rules() -> None:
    for (n, dropout, corrupt), (degree, threshold) in REFERENCE_TABLE.items():
        k = n - 1 if degree is None else degree
        assert 2 <= threshold <= k
        # Privacy against a lying server needs 2t > k (plus corrupt neighbours).
        assert 2 * threshold > k
        assert threshold_is_safe(threshold, clients=n, holders=k, corrupt_rate=corrupt)
        if degree is not None:
            assert degree % 2 == 0
            assert degree < n - 1
        # More dropouts or more corruption never make the graph sparser.
        for worse in (
            REFERENCE_TABLE.get((n, round(dropout + 0.1, 2), corrupt)),
            REFERENCE_TABLE.get((n, dropout, {0.0: 0.05, 0.05: 0.1, 0.1: 0.2}.get(corrupt, 1))),
        ):
            if worse is not None:
                assert (n - 1 if worse[0] is None else worse[0]) >= k, (n, dropout, corrupt)


# An independent evaluation of the three rules of the module docstring, in exact
# integer binomials, without the finder's shortcuts.


def _cut_is_unlikely(n: int, k: int, dropout: float, corrupt: float) -> bool:
    if k == n - 1:
        return True
    return n * (n - k - 1) / 2 * (dropout + corrupt) ** k < 2.0 ** -(SECURITY_BITS + 1)


def _short_probability(k: int, threshold: int, dropout: float) -> float:
    """P[more than k - t of k neighbours drop], dropouts independent with rate ``dropout``."""
    return sum(
        math.comb(k, x) * dropout**x * (1 - dropout) ** (k - x)
        for x in range(k - threshold + 1, k + 1)
    )


def _qualifies(n: int, k: int, dropout: float, corrupt: float) -> bool:
    threshold = required_threshold(clients=n, holders=k, corrupt_rate=corrupt)
    return (
        threshold <= k
        and _cut_is_unlikely(n, k, dropout, corrupt)
        and n * _short_probability(k, threshold, dropout) <= 2.0**-CORRECTNESS_BITS
    )


@pytest.mark.parametrize(
    ("dropout", "corrupt"), [(0.1, 0.05), (0.05, 0.0), (0.2, 0.1), (0.0, 0.05)]
)
def test_the_cheapest_qualifying_graph_is_chosen(dropout: float, corrupt: float) -> None:
    for n in [*range(3, 130), 150, 200, 301]:
        found = choose_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt)
        k = found.neighbours(n)
        assert found.threshold == required_threshold(clients=n, holders=k, corrupt_rate=corrupt)
        smaller = range(2, min(k, n - 1), 2)
        assert not any(_qualifies(n, d, dropout, corrupt) for d in smaller), (n, k)
        if _qualifies(n, k, dropout, corrupt):
            continue
        # Only the complete graph may miss the correctness target, when no graph meets it,
        # and it must still survive the expected dropouts.
        assert found.degree is None, (n, k)
        assert found.threshold <= n - 1 - math.floor(dropout * n + 1e-12)


@pytest.mark.parametrize(
    ("dropout", "corrupt"), [(0.1, 0.05), (0.05, 0.0), (0.2, 0.1), (0.3, 0.05), (0.1, 0.2)]
)
def test_cost_grows_smoothly_with_the_cohort(dropout: float, corrupt: float) -> None:
    sizes = range(3, 1201)
    ks = [
        choose_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt).neighbours(n)
        for n in sizes
    ]
    for n, before, after in zip(sizes[1:], ks, ks[1:], strict=False):
        if n <= 20:
            assert before <= after <= before + 1, n  # the complete graph of small cohorts
        else:
            assert 0.9 * before <= after <= 1.25 * before, (n, before, after)
    # Nothing special at 100: the cohorts around it cost about the same, far below n - 1.
    around = [ks[n - 3] for n in range(90, 111)]
    assert max(around) <= 1.25 * min(around)
    if (dropout, corrupt) == (0.1, 0.05):
        assert ks[100 - 3] == ks[103 - 3] == 42
        assert ks[100 - 3] < 99 / 2


def test_threshold_is_what_every_client_checks() -> None:
    sizes = [*range(3, 70), 73, 99, 100, 101, 103, 128, 150, 200, 333, 512, 1000, 2500]
    for n in sizes:
        for dropout in (0.0, 0.05, 0.1, 0.2, 0.3):
            for corrupt in (0.0, 0.05, 0.1, 0.2):
                found = choose_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt)
                k = found.neighbours(n)
                assert threshold_is_safe(
                    found.threshold, clients=n, holders=k, corrupt_rate=corrupt
                ), (n, dropout, corrupt)
                assert found.threshold == required_threshold(
                    clients=n, holders=k, corrupt_rate=corrupt
                )


def test_small_cohorts_at_the_default_rates_survive_typical_dropouts() -> None:
    # The coordinator's defaults. A fixed count floor(0.1 * 8) = 0 of dropouts would allow a
    # ring at n = 8; the binomial model keeps the complete graph there.
    for n in range(3, 31):
        found = choose_parameters(n, dropout_rate=0.1, corrupt_rate=0.05)
        assert found.degree is None
        assert found.threshold <= n - 1 - math.floor(0.1 * n)
    found = choose_parameters(8, dropout_rate=0.1, corrupt_rate=0.05)
    assert (found.degree, found.threshold) == (None, 4)  # survives 3 of 8 dropping
    # With no dropouts and no corruption at all, a ring is honest even for 8 clients.
    assert choose_parameters(8, dropout_rate=0.0, corrupt_rate=0.0) == GraphParameters(2, 2)


def test_binomial_dropouts_in_simulation() -> None:
    # n = 200 at the coordinator's defaults: each client drops with probability 0.1; every
    # survivor keeps >= t surviving neighbours.
    n = 200
    found = choose_parameters(n, dropout_rate=0.1, corrupt_rate=0.05)
    assert found.degree is not None
    rng = np.random.default_rng(7)
    for trial in range(30):
        graph = build_graph(range(1, n + 1), degree=found.degree, seed=trial.to_bytes(32, "big"))
        alive = {c for c in range(1, n + 1) if rng.random() >= 0.1}
        worst = min(len(graph.neighbours(c) & alive) for c in alive)
        assert worst >= found.threshold


def test_choosing_is_fast_up_to_ten_thousand_clients() -> None:
    for dropout, corrupt in ((0.1, 0.05), (0.3, 0.2), (0.4, 0.1), (0.45, 0.1), (0.05, 0.9)):
        _choose.cache_clear()
        start = time.perf_counter()
        # The last two are impossible: the search runs to the end and refuses.
        with contextlib.suppress(SecAggError):
            choose_parameters(10_000, dropout_rate=dropout, corrupt_rate=corrupt)
        assert time.perf_counter() - start < 1.0, (dropout, corrupt)


def test_neighbour_count_of_found_parameters() -> None:
    assert GraphParameters(degree=None, threshold=3).neighbours(10) == 9
    assert GraphParameters(degree=8, threshold=5).neighbours(100) == 8
    assert GraphParameters(degree=8, threshold=5).neighbours(6) == 5


def test_correctness_rule_holds_in_simulation() -> None:
    # n = 1000 with 100 dropouts and no corruption: every client keeps >= t survivors.
    degree, threshold = REFERENCE_TABLE[(1000, 0.1, 0.0)]
    assert degree is not None
    rng = np.random.default_rng(5)
    for trial in range(30):
        graph = build_graph(range(1, 1001), degree=degree, seed=trial.to_bytes(32, "big"))
        dropped = set(rng.choice(np.arange(1, 1001), size=100, replace=False).tolist())
        alive = set(range(1, 1001)) - dropped
        worst = min(len(graph.neighbours(c) & alive) for c in alive)
        assert worst >= threshold


@pytest.mark.parametrize(
    ("n", "dropout", "corrupt"), [(2, 0.1, 0.0), (100, 1.0, 0.0), (100, 0.1, -0.1), (50, 0.6, 0.0)]
)
def test_impossible_requests_are_refused(n: int, dropout: float, corrupt: float) -> None:
    with pytest.raises(SecAggError) as caught:
        choose_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt)
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS

"""The Harary neighbour graph and the (k, t) parameter finder."""

from __future__ import annotations

import numpy as np
import pytest

from secure_agg import ErrorCode, GraphParameters, SecAggError, build_graph, choose_parameters
from secure_agg.graph_params import COMPLETE_GRAPH_MAX_CLIENTS, REFERENCE_TABLE


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
    assert len(REFERENCE_TABLE) == 80
    for (n, dropout, corrupt), (degree, threshold) in REFERENCE_TABLE.items():
        found = choose_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt)
        assert (found.degree, found.threshold) == (degree, threshold), (n, dropout, corrupt)


def test_found_parameters_satisfy_the_documented_rules() -> None:
    for (n, dropout, corrupt), (degree, threshold) in REFERENCE_TABLE.items():
        k = n - 1 if degree is None else degree
        assert (degree is None) == (n <= COMPLETE_GRAPH_MAX_CLIENTS)
        assert 2 <= threshold <= k
        # Privacy against a lying server needs 2t > k (plus corrupt neighbours).
        assert 2 * threshold > k
        if degree is not None:
            assert degree % 2 == 0
        # More dropouts never make the graph sparser.
        worse = REFERENCE_TABLE.get((n, round(dropout + 0.1, 2), corrupt))
        if worse is not None and degree is not None:
            assert worse[0] is not None
            assert worse[0] >= degree


def test_neighbour_count_of_found_parameters() -> None:
    assert GraphParameters(degree=None, threshold=3).neighbours(10) == 9
    assert GraphParameters(degree=8, threshold=5).neighbours(100) == 8
    assert GraphParameters(degree=8, threshold=5).neighbours(6) == 5


def test_correctness_rule_holds_in_simulation() -> None:
    # n = 1000 with 10% dropouts and no corruption: every client keeps >= t survivors.
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

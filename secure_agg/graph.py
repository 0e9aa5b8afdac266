"""The neighbour graph: who shares keys and masks with whom.

SecAgg+ (Bell et al. 2020) replaces the complete graph of classic SecAgg with a random
k-regular graph, so each client does ``O(k)`` key agreements and PRG expansions instead of
``O(n)``. We use the *Harary* construction: place the clients on a circle in a random
order and join each to the ``k/2`` nearest on either side. The graph stays connected after
removing any set of clients unless that set contains two disjoint runs of ``k/2``
consecutive clients on the circle, which is the event the parameter finder in
:mod:`secure_agg.graph_params` bounds.

Randomness the server cannot grind. The order comes from an AES-CTR keystream keyed by
``HKDF(session_id, info="graph")``, and the session id hashes every advertised key
(:mod:`secure_agg.session`), including each client's fresh X25519 keys drawn on the device.
A server can therefore change the graph only by changing who takes part (dropping
advertised clients before the broadcast, or adding Sybils, which this package does not
defend against; see docs/architecture.md, section 4); it cannot pick a seed.

With ``degree=None`` or ``degree >= n - 1`` the graph is complete (classic SecAgg), which is
what the parameter finder picks only when no smaller degree meets its targets (small
cohorts).

Raises :class:`~secure_agg.errors.SecAggError` (``INVALID_PARAMETERS``) for an odd or
too-small degree, duplicate ids, or a lookup of a client not in the graph.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import numpy as np

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.kdf import Purpose, hkdf
from secure_agg.prg import Keystream

__all__ = ["NeighbourGraph", "build_graph"]

_BATCH = 1024


class _UniformInts:
    """Uniform integers below a bound, by rejection from 64-bit keystream words."""

    def __init__(self, seed: bytes) -> None:
        self._stream = Keystream(seed)
        self._words = np.empty(_BATCH, dtype=np.uint64)
        self._next = _BATCH

    def _word(self) -> int:
        if self._next == _BATCH:
            self._stream.fill(self._words)
            self._next = 0
        value = int(self._words[self._next])
        self._next += 1
        return value

    def below(self, bound: int) -> int:
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            word = self._word()
            if word < limit:
                return word % bound


@dataclasses.dataclass(frozen=True)
class NeighbourGraph:
    """An undirected graph over client ids, as a circle ``order`` and a ``degree``.

    ``degree`` is ``len(order) - 1`` for the complete graph, else even and at most
    ``len(order) - 2`` (a Harary graph). Use :func:`build_graph` to make one.
    """

    order: tuple[int, ...]
    degree: int

    @property
    def is_complete(self) -> bool:
        return self.degree >= len(self.order) - 1

    @functools.cached_property
    def clients(self) -> frozenset[int]:
        return frozenset(self.order)

    @functools.cached_property
    def _adjacency(self) -> dict[int, frozenset[int]]:
        n = len(self.order)
        if self.is_complete:
            return {client: self.clients - {client} for client in self.order}
        half = self.degree // 2
        return {
            client: frozenset(
                self.order[(position + offset) % n]
                for step in range(1, half + 1)
                for offset in (step, -step)
            )
            for position, client in enumerate(self.order)
        }

    def neighbours(self, client: int) -> frozenset[int]:
        """The ``degree`` neighbours of ``client`` (never the client itself)."""
        try:
            return self._adjacency[client]
        except KeyError as exc:
            raise SecAggError(
                ErrorCode.INVALID_PARAMETERS, f"client {client} is not in the graph"
            ) from exc

    def are_neighbours(self, first: int, second: int) -> bool:
        return second in self.neighbours(first)


def build_graph(clients: Iterable[int], *, degree: int | None, seed: bytes) -> NeighbourGraph:
    """The graph over ``clients`` for a session; ``seed`` is the session id.

    ``degree=None`` asks for the complete graph; otherwise ``degree`` must be even and >= 2,
    and any ``degree >= n - 1`` also gives the complete graph. The same ``clients`` and
    ``seed`` always give the same graph, whatever the order of ``clients``.
    """
    members = sorted(clients)
    if len(set(members)) != len(members):
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, "client ids in a graph must be unique")
    n = len(members)
    if degree is None or degree >= n - 1:
        return NeighbourGraph(order=tuple(members), degree=max(n - 1, 0))
    if degree < 2 or degree % 2:
        raise SecAggError(
            ErrorCode.INVALID_PARAMETERS, f"a Harary degree must be even and >= 2, got {degree}"
        )
    draw = _UniformInts(hkdf(seed, salt=b"", info=Purpose.GRAPH.value))
    for i in range(n - 1, 0, -1):
        j = draw.below(i + 1)
        members[i], members[j] = members[j], members[i]
    return NeighbourGraph(order=tuple(members), degree=degree)

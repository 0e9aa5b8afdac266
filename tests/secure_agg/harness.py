"""Drive one secure-aggregation round in process: honest clients, an honest server.

Tests and benchmarks use :class:`Round` phase by phase; each method takes the clients that
drop out at that point and, for adversarial tests, a hook that may rewrite what the server
sends to a client before the client sees it.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Collection, Iterable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_agg import (
    ClientMaskedInput,
    ClientMessage,
    ClientState,
    ClientStep,
    SecAggParams,
    ServerMessage,
    ServerPhase,
    ServerState,
    SessionConfig,
    encode,
    start_client,
    start_server,
    update_layout,
)
from secure_agg.signing import identity_public_bytes

Tamper = Callable[[int, ServerMessage], ServerMessage]


def seeded_source(*parts: object) -> Callable[[int], bytes]:
    """A deterministic stand-in for ``os.urandom``, one stream per ``parts``."""
    return random.Random("/".join(str(part) for part in parts)).randbytes


def make_config(
    *,
    delta_length: int,
    threshold: int,
    degree: int | None,
    max_clients: int = 64,
    ring_bits: int = 32,
    moment_length: int = 2,
    round_id: str = "round-1",
) -> SessionConfig:
    layout = update_layout(
        delta_length=delta_length,
        delta_clip=1.0,
        moment_length=moment_length,
        moment_max=4.0,
        weight_max=100.0,
        max_clients=max_clients,
        ring_bits=ring_bits,
    )
    params = SecAggParams(threshold=threshold, degree=degree, layout=layout)
    return SessionConfig(round_id=round_id, model_hash=bytes(32), params=params)


def random_values(config: SessionConfig, client_id: int, seed: object) -> dict[str, np.ndarray]:
    """Inputs for every non-counter segment; deltas sometimes outside the clip range."""
    rng = np.random.default_rng([client_id, zlib.crc32(str(seed).encode())])
    values = {}
    for segment in config.params.layout.segments:
        if segment.is_clip_counter:
            continue
        span = segment.high - segment.low
        values[segment.name] = rng.uniform(
            segment.low - 0.1 * span, segment.high + 0.1 * span, size=segment.length
        )
    return values


class Round:
    """One round: ``clients`` by id, the server state, and the server's latest outbox."""

    def __init__(
        self,
        config: SessionConfig,
        client_ids: Iterable[int],
        *,
        seed: object = 0,
        corrupt_rate: float = 0.0,
    ):
        self.config = config
        self.corrupt_rate = corrupt_rate
        """What the clients assume (``max_clients`` is larger than most test cohorts, so the
        default 0 lets small tests pick any ``t`` with ``2t > neighbours``)."""
        self.layout = config.params.layout
        self.seed = seed
        self.ids = sorted(client_ids)
        self.identities = {
            cid: Ed25519PrivateKey.from_private_bytes(seeded_source(seed, "id", cid)(32))
            for cid in self.ids
        }
        cohort = {cid: identity_public_bytes(key) for cid, key in self.identities.items()}
        self.server: ServerState = start_server(config, cohort=cohort)
        self.clients: dict[int, ClientState] = {}
        self.outbox: dict[int, ServerMessage] = {}
        self.encoded: dict[int, np.ndarray] = {}
        self.values: dict[int, dict[str, np.ndarray]] = {}
        self.sent: list[ClientMessage] = []
        self.keep_values = True
        """Keep each client's float inputs in ``values`` (benchmarks at large d turn it off)."""

    @property
    def phase(self) -> ServerPhase:
        assert isinstance(self.server, ServerPhase), self.server
        return self.server

    def send(self, message: ClientMessage) -> None:
        self.sent.append(message)
        self.phase.receive(message)

    def close(self) -> None:
        step = self.phase.close()
        self.server = step.state
        self.outbox = step.messages

    def advertise(self, drop: Collection[int] = ()) -> None:
        """Phase 0: every client not in ``drop`` advertises keys; then close."""
        for cid in self.ids:
            if cid in drop:
                continue
            step = start_client(
                self.config,
                client_id=cid,
                identity_key=self.identities[cid],
                corrupt_rate=self.corrupt_rate,
                source=seeded_source(self.seed, "client", cid),
            )
            self.clients[cid] = step.state
            assert step.message is not None
            self.send(step.message)
        self.close()

    def deliver(
        self,
        drop: Collection[int] = (),
        tamper: Tamper | None = None,
        shuffle: random.Random | None = None,
    ) -> dict[int, ClientStep]:
        """Hand the outbox to its clients (skipping ``drop``), forward replies to the server.

        ``shuffle`` randomizes the order in which clients are served (and so the order in
        which their replies reach the server).
        """
        steps = {}
        items = sorted(self.outbox.items())
        if shuffle is not None:
            shuffle.shuffle(items)
        for cid, message in items:
            if cid in drop:
                continue
            if tamper is not None:
                message = tamper(cid, message)
            step = self.clients[cid].handle(message)
            self.clients[cid] = step.state
            steps[cid] = step
            if step.message is not None:
                self.send(step.message)
        return steps

    def mask(
        self,
        drop: Collection[int] = (),
        chunk: int | None = None,
        values_for: Callable[[int], dict[str, np.ndarray]] | None = None,
    ) -> None:
        """Phase 2: every client waiting to mask (not in ``drop``) uploads its input.

        Inputs come from ``values_for(client_id)``, or :func:`random_values` by default.
        """
        for cid, state in sorted(self.clients.items()):
            if cid in drop or not isinstance(state, ClientMaskedInput):
                continue
            if values_for is not None:
                values = values_for(cid)
            else:
                values = random_values(self.config, cid, self.seed)
            encoded = encode(self.layout, values, source=seeded_source(self.seed, "q", cid))
            if self.keep_values:
                self.values[cid] = values
            self.encoded[cid] = encoded
            step = state.mask(encoded)
            self.clients[cid] = step.state
            assert step.message is not None
            if chunk is None:
                self.send(step.message)
            else:
                pieces = list(step.message.chunks(chunk))  # type: ignore[union-attr]
                random.Random(cid).shuffle(pieces)
                for piece in pieces:
                    self.send(piece)

    def run(
        self,
        *,
        before_keys: Collection[int] = (),
        after_keys: Collection[int] = (),
        after_shares: Collection[int] = (),
        after_input: Collection[int] = (),
        during_unmask: Collection[int] = (),
        chunk: int | None = None,
    ) -> ServerState:
        """A whole round with dropouts at each point; stops early if the server aborts."""
        self.advertise(drop=before_keys)
        if isinstance(self.server, ServerPhase):
            self.deliver(drop=after_keys)
            self.close()
        if isinstance(self.server, ServerPhase):
            self.deliver()
            self.mask(drop=after_shares, chunk=chunk)
            self.close()
        if isinstance(self.server, ServerPhase):
            self.deliver(drop=after_input)
            self.close()
        if isinstance(self.server, ServerPhase):
            self.deliver(drop=during_unmask)
            self.close()
        return self.server

    def expected_ring_sum(self, survivors: Iterable[int]) -> np.ndarray:
        total = np.zeros(self.layout.length, dtype=self.layout.dtype)
        for cid in survivors:
            np.add(total, self.encoded[cid], out=total)
        return total

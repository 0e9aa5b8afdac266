"""The server's plain, persistable per-phase data, and the round's result.

Each server phase (:mod:`secure_agg.server`, :mod:`secure_agg.server_masking`) keeps all
its state in one of these mutable dataclasses: frozen messages, ids, sets, dicts and, from
phase 2 on, one numpy array (the running sum, ``layout.length`` elements of the ring dtype).
Nothing else is needed to rebuild a phase after a restart
(:func:`secure_agg.server.restore_server`); the coordinator may persist them field by field
(the messages map to protobuf) or as a whole.

Sets and dicts are owned by the phase that holds the data; the running sum moves from
phase to phase without copies and ends up in :class:`AggregateResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from secure_agg.messages import AdvertiseKeys, ShareKeys, UnmaskResponse
from secure_agg.params import SessionConfig
from secure_agg.quantize import SegmentLayout, decode_sum
from secure_agg.reasons import AbortReason, DropReason, Phase
from secure_agg.session import Session

__all__ = [
    "AdvertiseKeysData",
    "AggregateResult",
    "ChunkReceipt",
    "ConsistencyCheckData",
    "Dropout",
    "MaskedInputData",
    "ShareKeysData",
    "UnmaskingData",
    "chunk_digest",
]


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Why and when a client stopped counting as alive (metric labels)."""

    phase: Phase
    reason: DropReason
    client_reason: AbortReason | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class AggregateResult:
    """The unmasked sum of the survivors' (U3) quantized vectors, in the ring."""

    session_id: bytes
    survivors: tuple[int, ...]
    ring_sum: np.ndarray
    outvoted: frozenset[int] = frozenset()
    """Responders whose revealed shares lie off the only polynomial that holds most shares
    and meets its owner's commitment (:func:`~secure_agg.unmasking.recover_secret`): forged
    by them, or dealt so by the owner. The secrets were rebuilt without them."""

    @property
    def num_clients(self) -> int:
        return len(self.survivors)

    def decode(self, layout: SegmentLayout) -> dict[str, np.ndarray]:
        """Float64 sums per segment (:func:`~secure_agg.quantize.decode_sum`)."""
        return decode_sum(layout, self.ring_sum, num_clients=self.num_clients)


def chunk_digest(values: np.ndarray) -> bytes:
    """SHA-256 of a chunk's values as little-endian bytes (the same on every machine)."""
    little = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    return hashlib.sha256(little.data).digest()


@dataclasses.dataclass(frozen=True)
class ChunkReceipt:
    """A summed chunk of a masked input: its length and the digest of its values.

    The digest tells a resent chunk (a duplicate) from one with other values at the same
    offset (a conflict), also after the phase was rebuilt from persisted data.
    """

    length: int
    digest: bytes


@dataclasses.dataclass
class AdvertiseKeysData:
    """Phase 0. ``cohort`` maps selected client ids to their enrolled identity keys."""

    config: SessionConfig
    cohort: dict[int, bytes] | None
    adverts: dict[int, AdvertiseKeys] = dataclasses.field(default_factory=dict)
    dropouts: dict[int, Dropout] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ShareKeysData:
    """Phase 1: the session (U1) and the shares received so far."""

    session: Session
    shares: dict[int, ShareKeys] = dataclasses.field(default_factory=dict)
    dropouts: dict[int, Dropout] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MaskedInputData:
    """Phase 2: U2, the shares to route, the running sum and each client's chunks.

    ``chunks[client]`` maps offsets to the :class:`ChunkReceipt` of each summed chunk;
    ``complete`` is U3 so far.
    """

    session: Session
    u2: frozenset[int]
    shares: dict[int, ShareKeys]
    running_sum: np.ndarray
    chunks: dict[int, dict[int, ChunkReceipt]] = dataclasses.field(default_factory=dict)
    complete: set[int] = dataclasses.field(default_factory=set)
    dropouts: dict[int, Dropout] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ConsistencyCheckData:
    """Phase 3: U2, U3, the masked sum and the survivor-set signatures so far."""

    session: Session
    u2: frozenset[int]
    u3: frozenset[int]
    running_sum: np.ndarray
    signatures: dict[int, bytes] = dataclasses.field(default_factory=dict)
    dropouts: dict[int, Dropout] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class UnmaskingData:
    """Phase 4: U2, U3, U4 with their signatures, the masked sum and the responses so far."""

    session: Session
    u2: frozenset[int]
    u3: frozenset[int]
    signatures: dict[int, bytes]
    running_sum: np.ndarray
    responses: dict[int, UnmaskResponse] = dataclasses.field(default_factory=dict)
    dropouts: dict[int, Dropout] = dataclasses.field(default_factory=dict)

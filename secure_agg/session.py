"""The session: the advertised key table, the session id and the neighbour graph.

After phase 0 the server and every client hold the same :class:`Session`: the round's
:class:`~secure_agg.params.SessionConfig` and the advertised keys of U1. From it both derive

* the **session id**, ``SHA-256`` over a domain label, the round id, the canonical
  parameters, the model hash and every advertised entry (id, identity key, both X25519 keys,
  signature), each field length-prefixed, entries sorted by client id. Every derived key
  (HKDF salt), every share (AES-GCM associated data) and every later message is bound to it;
* the **neighbour graph**, seeded by the session id (:mod:`secure_agg.graph`);
* the **self-mask seed** of a client from its secret ``b``, and the **commitment** to ``b``
  that the client signs when it advertises (:func:`commit_self_mask`).

A ``Session`` is immutable plain data, safe to persist and rebuild.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

from secure_agg.graph import NeighbourGraph, build_graph
from secure_agg.kdf import Purpose, hkdf
from secure_agg.messages import AdvertiseKeys
from secure_agg.params import SessionConfig
from secure_agg.shamir import encode_share

__all__ = [
    "COMMITMENT_BYTES",
    "Session",
    "commit_self_mask",
    "compute_session_id",
    "self_mask_seed",
]

_SESSION_LABEL = b"fedadamw-secagg/v2/session"
_COMMITMENT_LABEL = b"fedadamw-secagg/v1/self-mask-commitment"
COMMITMENT_BYTES = 32


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def compute_session_id(config: SessionConfig, keys: tuple[AdvertiseKeys, ...]) -> bytes:
    """The 32-byte session id of ``config`` and the advertised ``keys`` (any order)."""
    digest = hashlib.sha256()
    digest.update(_SESSION_LABEL)
    digest.update(_field(config.round_id.encode("utf-8")))
    digest.update(_field(config.params.canonical_bytes()))
    digest.update(_field(config.model_hash))
    digest.update(len(keys).to_bytes(4, "big"))
    for entry in sorted(keys, key=lambda item: item.client_id):
        digest.update(entry.client_id.to_bytes(8, "big"))
        digest.update(_field(entry.identity_key))
        digest.update(_field(entry.encryption_key))
        digest.update(_field(entry.masking_key))
        digest.update(_field(entry.self_mask_commitment))
        digest.update(_field(entry.signature))
    return digest.digest()


def self_mask_seed(*, session_id: bytes, client_id: int, secret: int) -> bytes:
    """The PRG seed of a client's self mask, from its Shamir-shared secret ``b``."""
    return hkdf(
        encode_share(secret),
        salt=session_id,
        info=Purpose.SELF_MASK.value + client_id.to_bytes(8, "big"),
    )


def commit_self_mask(*, round_id: str, client_id: int, secret: int) -> bytes:
    """SHA-256 over a label, the round, the client and ``b``: the client's commitment to ``b``.

    ``b`` is uniform in the 255-bit field, so the hash reveals nothing useful about it;
    binding the round and the client stops a commitment from being replayed elsewhere.
    """
    digest = hashlib.sha256(_COMMITMENT_LABEL)
    digest.update(_field(round_id.encode("utf-8")))
    digest.update(client_id.to_bytes(8, "big"))
    digest.update(encode_share(secret))
    return digest.digest()


@dataclasses.dataclass(frozen=True)
class Session:
    """The configuration and the advertised keys of U1 (sorted by client id)."""

    config: SessionConfig
    keys: tuple[AdvertiseKeys, ...]

    @functools.cached_property
    def session_id(self) -> bytes:
        return compute_session_id(self.config, self.keys)

    @functools.cached_property
    def by_id(self) -> dict[int, AdvertiseKeys]:
        return {entry.client_id: entry for entry in self.keys}

    @functools.cached_property
    def clients(self) -> frozenset[int]:
        """U1: every client that advertised keys."""
        return frozenset(self.by_id)

    @functools.cached_property
    def graph(self) -> NeighbourGraph:
        return build_graph(self.clients, degree=self.config.params.degree, seed=self.session_id)

    def neighbours(self, client_id: int) -> frozenset[int]:
        return self.graph.neighbours(client_id)

    @property
    def threshold(self) -> int:
        return self.config.params.threshold

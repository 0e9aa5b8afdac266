"""SecAgg+ secure aggregation, without transport.

A server learns the sum of the clients' quantized vectors in a ring, and nothing else about
any one vector, while up to ``n - t`` clients drop out at any phase (Bonawitz et al. 2017,
with the neighbour graph of Bell et al. 2020). The package does no I/O: the coordinator,
the edge agent and the tests drive the same state machines with plain messages.

Main entry points:

* round setup: :class:`SessionConfig`, :class:`SecAggParams`, :func:`update_layout` /
  :class:`SegmentLayout`, :func:`choose_parameters`;
* client: :func:`encode` a vector, :func:`start_client`, then ``step.state.handle(...)``
  and ``ClientMaskedInput.mask(...)``;
* server: :func:`start_server`, then ``phase.receive(...)`` and ``phase.close()``; the
  result's ``decode(layout)`` gives float64 sums.

Primitives live in submodules: :mod:`secure_agg.prg`, :mod:`secure_agg.kdf`,
:mod:`secure_agg.aead`, :mod:`secure_agg.signing`, :mod:`secure_agg.shamir`.

What it promises and what not (docs/architecture.md, section 4): an honest-but-curious server learns
only the sum of at least t inputs; with signatures and the consistency check, a server that
lies about dropouts gains nothing. It does not protect against a server that invents
clients (Sybils; that needs the enrollment CA or attestation to vouch for identity keys),
nor against clients that submit poisoned updates.
"""

from __future__ import annotations

from secure_agg import aead, kdf, prg, shamir, signing
from secure_agg.client import (
    ClientAborted,
    ClientAdvertiseKeys,
    ClientCompleted,
    ClientConsistencyCheck,
    ClientMaskedInput,
    ClientShareKeys,
    ClientState,
    ClientStep,
    ClientUnmasking,
    start_client,
)
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.graph import NeighbourGraph, build_graph
from secure_agg.graph_params import GraphParameters, choose_parameters
from secure_agg.messages import (
    AdvertiseKeys,
    ClientAbort,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeysBroadcast,
    MaskedInput,
    MaskedInputChunk,
    RevealedShare,
    RoundAborted,
    ServerMessage,
    ShareKeys,
    SharesDelivery,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secure_agg.params import SecAggParams, SessionConfig
from secure_agg.quantize import (
    QuantSegment,
    SegmentLayout,
    decode_sum,
    encode,
    max_bits,
    sum_error_bound,
    update_layout,
)
from secure_agg.randomness import RandomSource
from secure_agg.reasons import AbortReason, DropReason, Phase, ReceiveOutcome
from secure_agg.server import (
    ServerAborted,
    ServerAdvertiseKeys,
    ServerCompleted,
    ServerConsistencyCheck,
    ServerMaskedInput,
    ServerPhase,
    ServerShareKeys,
    ServerState,
    ServerStep,
    ServerUnmasking,
    restore_server,
    start_server,
)
from secure_agg.server_state import (
    AdvertiseKeysData,
    AggregateResult,
    ConsistencyCheckData,
    Dropout,
    MaskedInputData,
    ShareKeysData,
    UnmaskingData,
)
from secure_agg.session import Session, compute_session_id

__all__ = [
    "AbortReason",
    "AdvertiseKeys",
    "AdvertiseKeysData",
    "AggregateResult",
    "ClientAbort",
    "ClientAborted",
    "ClientAdvertiseKeys",
    "ClientCompleted",
    "ClientConsistencyCheck",
    "ClientMaskedInput",
    "ClientMessage",
    "ClientShareKeys",
    "ClientState",
    "ClientStep",
    "ClientUnmasking",
    "ConsistencyCheckData",
    "ConsistencyRequest",
    "ConsistencySignature",
    "DropReason",
    "Dropout",
    "EncryptedShare",
    "ErrorCode",
    "GraphParameters",
    "KeysBroadcast",
    "MaskedInput",
    "MaskedInputChunk",
    "MaskedInputData",
    "NeighbourGraph",
    "Phase",
    "QuantSegment",
    "RandomSource",
    "ReceiveOutcome",
    "RevealedShare",
    "RoundAborted",
    "SecAggError",
    "SecAggParams",
    "SegmentLayout",
    "ServerAborted",
    "ServerAdvertiseKeys",
    "ServerCompleted",
    "ServerConsistencyCheck",
    "ServerMaskedInput",
    "ServerMessage",
    "ServerPhase",
    "ServerShareKeys",
    "ServerState",
    "ServerStep",
    "ServerUnmasking",
    "Session",
    "SessionConfig",
    "ShareKeys",
    "ShareKeysData",
    "SharesDelivery",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "UnmaskingData",
    "aead",
    "build_graph",
    "choose_parameters",
    "compute_session_id",
    "decode_sum",
    "encode",
    "kdf",
    "max_bits",
    "prg",
    "restore_server",
    "shamir",
    "signing",
    "start_client",
    "start_server",
    "sum_error_bound",
    "update_layout",
]

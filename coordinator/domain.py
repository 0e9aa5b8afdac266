"""The coordinator's domain: frozen dataclasses and enums, free of protobuf and SQL.

Times are timezone-aware UTC ``datetime``s. Client ids are the enrolled ids the
coordinator assigns (positive integers); ``secagg_id`` is a client's id within one round's
secure aggregation (1..n, the Shamir x-coordinate).

A round moves through its phases in the order of ``PHASE_ORDER``, the one table that every
other phase order (the transitions, the phase numbers of the metrics, the deadlines, replay)
derives from::

    ADVERTISE_KEYS → SHARE_KEYS → MASKED_INPUT → CONSISTENCY_CHECK → UNMASKING → COMMITTED
    (any open phase) → ABORTED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

__all__ = [
    "NEXT_PHASE",
    "NOT_STARTING_NOTE",
    "OPEN_PHASES",
    "PHASE_ORDER",
    "REVOCATION_REFRESH",
    "AddResult",
    "AdvertisedKeysRecord",
    "AuditEvent",
    "Client",
    "ConsistencySignatureRecord",
    "EnrollmentToken",
    "InputChunkRecord",
    "ModelVersion",
    "Participant",
    "ParticipantStatus",
    "PhaseTiming",
    "Round",
    "RoundOutcome",
    "RoundPhase",
    "RoundSums",
    "ShareRecord",
    "UnmaskRecord",
    "phase_rank",
]


class RoundPhase(enum.StrEnum):
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"  # includes local training
    CONSISTENCY_CHECK = "consistency_check"
    UNMASKING = "unmasking"
    COMMITTED = "committed"
    ABORTED = "aborted"


NOT_STARTING_NOTE = "not_starting"
"""The key of the store's note of why the next round has not started (the waiting room
writes it, ``fedadamw-coordinator status`` shows it)."""

PHASE_ORDER: tuple[RoundPhase, ...] = (
    RoundPhase.ADVERTISE_KEYS,
    RoundPhase.SHARE_KEYS,
    RoundPhase.MASKED_INPUT,
    RoundPhase.CONSISTENCY_CHECK,
    RoundPhase.UNMASKING,
)
"""The open phases in the order a round goes through them."""

OPEN_PHASES = frozenset(PHASE_ORDER)

NEXT_PHASE: dict[RoundPhase, RoundPhase] = dict(
    zip(PHASE_ORDER, (*PHASE_ORDER[1:], RoundPhase.COMMITTED), strict=True)
)
"""The phase each open phase leads to when it closes without an abort."""


def phase_rank(phase: RoundPhase) -> int:
    """A phase's place in ``PHASE_ORDER``; both ends rank last, after UNMASKING."""
    return PHASE_ORDER.index(phase) if phase in OPEN_PHASES else len(PHASE_ORDER)


class RoundOutcome(enum.StrEnum):
    RUNNING = "running"
    COMMITTED = "committed"
    ABORTED = "aborted"


class ParticipantStatus(enum.StrEnum):
    """How far a selected client got; DROPPED once it missed a phase or left."""

    SELECTED = "selected"
    ADVERTISED = "advertised"
    SHARED = "shared"
    UPLOADED = "uploaded"
    SIGNED = "signed"
    UNMASKED = "unmasked"
    DROPPED = "dropped"


class AddResult(enum.StrEnum):
    """What storing an idempotent record did."""

    ADDED = "added"
    DUPLICATE = "duplicate"  # the same record was already stored: nothing changed


@dataclass(frozen=True)
class EnrollmentToken:
    """A single-use enrollment token; only its sha256 (hex) is ever stored."""

    token_hash: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    client_id: int | None = None


# Seconds between a coordinator's reads of the revoked clients (coordinator.auth.Revocations):
# a revocation is in force on every coordinator of the database within this time.
REVOCATION_REFRESH = 1.0


@dataclass(frozen=True)
class Client:
    """An enrolled edge agent.

    ``identity_key`` is its raw 32-byte Ed25519 public key (it signs the agent's round keys);
    ``certificate_pem`` the client certificate the CA issued for its TLS key.
    """

    client_id: int
    identity_key: bytes
    label: str
    certificate_pem: bytes
    certificate_serial: int
    enrolled_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class Round:
    """One round of training.

    ``number`` counts rounds from 0 (aborted ones included); ``model_version`` is the
    version the round trains from. ``config`` is the round configuration as canonical JSON
    (what every selected agent receives, the secure-aggregation session included).
    ``deadline`` ends the current phase. ``survivors`` is set when the round ends.
    """

    round_id: str
    number: int
    model_version: int
    phase: RoundPhase
    outcome: RoundOutcome
    config: str
    started_at: datetime
    deadline: datetime
    finished_at: datetime | None = None
    abort_reason: str | None = None
    survivors: int | None = None

    @property
    def is_open(self) -> bool:
        return self.phase in OPEN_PHASES


@dataclass(frozen=True)
class Participant:
    """A client selected into a round. ``dropped_in``/``drop_reason`` are set once dropped;
    ``input_complete`` once its whole masked input is durable (it stays set if the client
    drops later: its input is in the sum)."""

    round_id: str
    client_id: int
    secagg_id: int
    status: ParticipantStatus = ParticipantStatus.SELECTED
    dropped_in: RoundPhase | None = None
    drop_reason: str | None = None
    input_complete: bool = False


@dataclass(frozen=True)
class PhaseTiming:
    """When a round's phase started and closed, and how many clients were alive at close."""

    round_id: str
    phase: RoundPhase
    started_at: datetime
    closed_at: datetime | None = None
    alive: int | None = None


@dataclass(frozen=True)
class ModelVersion:
    """A global model and the optimizer state that comes with it.

    Version 0 is the initial model. The three blobs are addressed by sha256 (hex):
    the model x (float32, flat layout), ΔG (float32, flat layout) and v̄ (float64 block
    means). ``global_step`` is t. ``round_id`` is None for version 0.

    Retention (docs/architecture.md, section 5): ``pinned`` keeps the blobs whatever the
    policy says (an export or ``version pin``); ``blobs_deleted_at`` is when the policy
    released them. A released version stays as history, but its blobs may be gone.
    """

    version: int
    created_at: datetime
    model_sha256: str
    global_update_sha256: str
    second_moment_sha256: str
    global_step: int
    layout_fingerprint: str
    round_id: str | None = None
    num_clients: int = 0
    test_loss: float | None = None
    test_accuracy: float | None = None
    pinned: bool = False
    blobs_deleted_at: datetime | None = None

    @property
    def retained(self) -> bool:
        """Whether the version's blobs are kept (not released by the retention policy)."""
        return self.blobs_deleted_at is None

    @property
    def blob_hashes(self) -> frozenset[str]:
        """The sha256 of its three blobs (fewer when two hold the same bytes)."""
        return frozenset((self.model_sha256, self.global_update_sha256, self.second_moment_sha256))


@dataclass(frozen=True)
class AdvertisedKeysRecord:
    """Phase 0: a participant's two X25519 public keys, its commitment to its self-mask
    secret, and its Ed25519 signature over them."""

    round_id: str
    secagg_id: int
    encryption_key: bytes
    masking_key: bytes
    self_mask_commitment: bytes
    signature: bytes


@dataclass(frozen=True)
class ShareRecord:
    """Phase 1: one sealed share, routed from ``sender`` to ``recipient`` (secagg ids)."""

    round_id: str
    sender: int
    recipient: int
    ciphertext: bytes


@dataclass(frozen=True)
class InputChunkRecord:
    """Phase 2: the receipt of one durable chunk of a participant's masked input."""

    round_id: str
    secagg_id: int
    chunk_index: int
    sha256: str


@dataclass(frozen=True)
class ConsistencySignatureRecord:
    """Phase 3: a participant's signature over the survivor set."""

    round_id: str
    secagg_id: int
    signature: bytes


@dataclass(frozen=True)
class UnmaskRecord:
    """Phase 4: the shares a participant revealed, as ``(owner, 32-byte share)`` pairs."""

    round_id: str
    secagg_id: int
    self_mask_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class AuditEvent:
    """An operator-visible event: enrollments, revocations, round outcomes, restarts."""

    at: datetime
    actor: str
    action: str
    detail: str = ""
    event_id: int | None = field(default=None, compare=False)


@dataclass(frozen=True, eq=False)
class RoundSums:
    """A round's decoded float64 sums over ``survivors`` clients (secure_agg.decode_sum)."""

    delta: np.ndarray
    second_moment: np.ndarray | None
    weight: float
    clipped: float
    survivors: int
    samples: float = 0.0
    train_loss: float = 0.0  # the sum of the survivors' mean local losses

"""The store: the coordinator's durable state, behind one interface over domain objects.

Implementations (``coordinator.store.sql.SqlStore``: SQLite or PostgreSQL) take and return
the frozen dataclasses of ``coordinator.domain`` and never protobuf. Every method is one
transaction: it commits entirely or changes nothing, and it raises ``StoreError`` with a
code, never returns None or False to mean failure.

Round-scoped writes (``add_*``) check, in the same transaction as the write, that the
round is open in the phase the record belongs to and that the participant is in the
cohort and not dropped. So a record is never stored after its phase closed, and a phase
closes only over records stored before it (``advance_phase`` locks the round row).

Idempotency: storing a record equal to one already stored returns ``AddResult.DUPLICATE``
and changes nothing; a *different* record for the same key raises ``CONFLICT``.

The store assumes no single process: several coordinator replicas and the admin CLI may
use the same database at once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime

from coordinator.domain import (
    AddResult,
    AdvertisedKeysRecord,
    AuditEvent,
    Client,
    ConsistencySignatureRecord,
    EnrollmentToken,
    InputChunkRecord,
    ModelVersion,
    Participant,
    ParticipantStatus,
    PhaseTiming,
    Round,
    RoundPhase,
    ShareRecord,
    UnmaskRecord,
)

__all__ = ["IssueCertificate", "Store"]

IssueCertificate = Callable[[int], tuple[bytes, int]]
"""Given a new client id, issue its certificate: returns (certificate PEM, serial)."""


class Store(abc.ABC):
    """The coordinator's durable state. See the module docstring for the contract."""

    def batch(self) -> AbstractContextManager[None]:
        """A block whose writes on this thread commit together, each undone alone if it
        raises (``coordinator.group_commit``); a failed commit raises and stores none. By
        default each write is a transaction of its own."""
        return nullcontext()

    # --- schema -------------------------------------------------------------------------

    @abc.abstractmethod
    def check_schema(self) -> None:
        """Raise ``SCHEMA_OUTDATED`` unless the database is at the code's schema revision.

        The message names the command that fixes it:
        ``fedadamw-coordinator db upgrade --data-dir DIR [--db URL]``.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    # --- enrollment ---------------------------------------------------------------------

    @abc.abstractmethod
    def create_token(self, token: EnrollmentToken) -> None:
        """Store a new token (by hash). ``CONFLICT`` if the hash exists."""

    @abc.abstractmethod
    def enroll(
        self,
        *,
        token_hash: str,
        identity_key: bytes,
        label: str,
        now: datetime,
        issue_certificate: IssueCertificate,
    ) -> Client:
        """Spend a token on a new client, atomically.

        Creates the client (the store assigns its id), calls ``issue_certificate(id)`` in
        the same transaction and stores the certificate, and marks the token used. If the
        certificate cannot be issued, nothing changes.

        A retry with a token this same ``identity_key`` already spent returns that client
        unchanged (the first answer may have been lost on the network).

        Raises ``TOKEN_INVALID`` (unknown hash), ``TOKEN_EXPIRED``, ``TOKEN_USED`` (spent by
        another key), or ``CONFLICT`` (the identity key is already enrolled by another token).
        """

    @abc.abstractmethod
    def get_client(self, client_id: int) -> Client:
        """``NOT_FOUND`` if there is no such client."""

    @abc.abstractmethod
    def list_clients(self) -> list[Client]:
        """All clients, by id."""

    @abc.abstractmethod
    def revoke_client(self, client_id: int, *, now: datetime) -> Client:
        """Revoke at ``now`` (a second revocation keeps the first time). ``NOT_FOUND``."""

    @abc.abstractmethod
    def revoked_client_ids(self) -> frozenset[int]:
        """The ids of the revoked clients. The coordinator reads it about once a second,
        whatever the number of agents (``coordinator.auth.Revocations``)."""

    @abc.abstractmethod
    def count_enrolled(self) -> int:
        """How many clients are enrolled and not revoked (counted in the database)."""

    # --- rounds -------------------------------------------------------------------------

    @abc.abstractmethod
    def create_round(self, round_: Round, participants: Sequence[Participant]) -> None:
        """Start a round with its cohort and open the timing of its first phase.

        ``CONFLICT`` if another round is open, if the round id exists, or if
        ``round_.model_version`` is not the latest model version.
        """

    @abc.abstractmethod
    def get_round(self, round_id: str) -> Round:
        """``NOT_FOUND`` if there is no such round."""

    @abc.abstractmethod
    def open_round(self) -> Round | None:
        """The round that is not finished, if any (there is at most one)."""

    @abc.abstractmethod
    def list_rounds(self, *, limit: int | None = None) -> list[Round]:
        """Rounds, newest (highest number) first, at most ``limit``."""

    @abc.abstractmethod
    def next_round_number(self) -> int:
        """One more than the highest round number, or 0."""

    @abc.abstractmethod
    def list_participants(self, round_id: str) -> list[Participant]:
        """The round's cohort, by secagg id."""

    @abc.abstractmethod
    def get_participant(self, round_id: str, client_id: int) -> Participant:
        """``NOT_IN_COHORT`` if the client was not selected into the round."""

    @abc.abstractmethod
    def list_phase_timings(self, round_id: str) -> list[PhaseTiming]:
        """The round's phases in the order they started."""

    @abc.abstractmethod
    def advance_phase(
        self,
        round_id: str,
        *,
        expected: RoundPhase,
        new: RoundPhase,
        now: datetime,
        deadline: datetime,
        dropped: Mapping[int, str],
        statuses: Mapping[int, ParticipantStatus] | None = None,
    ) -> Round:
        """Close phase ``expected`` and open ``new`` (not COMMITTED or ABORTED: see below).

        ``dropped`` maps secagg ids to why they are dropped in ``expected``; ``statuses``
        sets other participants' statuses. Records the closed phase's timing (alive = the
        participants not dropped) and opens the new one.

        Raises ``WRONG_PHASE`` if the round is not in ``expected`` (someone else moved it)
        and ``INVALID_ARGUMENT`` if the transition table forbids the move.
        """

    @abc.abstractmethod
    def abort_round(
        self,
        round_id: str,
        *,
        reason: str,
        now: datetime,
        dropped: Mapping[int, str] | None = None,
    ) -> Round:
        """End an open round as aborted, closing its current phase's timing, and delete its
        protocol records (advertised keys, shares, chunk receipts, signatures, unmask
        responses: only a replay of the open round reads them).

        Aborting an already aborted round returns it unchanged; ``WRONG_PHASE`` if it was
        committed.
        """

    @abc.abstractmethod
    def commit_round(
        self,
        round_id: str,
        *,
        version: ModelVersion,
        now: datetime,
        dropped: Mapping[int, str] | None = None,
    ) -> Round:
        """In one transaction: store ``version``, end the round as committed (its phase
        UNMASKING closes), set survivors to ``version.num_clients``, mark the unmasked
        participants and the dropped ones, and delete the round's protocol records (as
        ``abort_round`` does).

        ``CONFLICT`` unless ``version.version`` is exactly one more than the latest
        version and the round trained from the latest (model versions only move forward);
        ``WRONG_PHASE`` unless the round is in UNMASKING.
        """

    # --- secure-aggregation records -----------------------------------------------------

    @abc.abstractmethod
    def add_advertised_keys(self, record: AdvertisedKeysRecord) -> AddResult:
        """Phase ADVERTISE_KEYS; sets the participant ADVERTISED."""

    @abc.abstractmethod
    def list_advertised_keys(self, round_id: str) -> list[AdvertisedKeysRecord]:
        """By secagg id."""

    @abc.abstractmethod
    def add_shares(self, round_id: str, sender: int, shares: Sequence[ShareRecord]) -> AddResult:
        """Phase SHARE_KEYS: all of one sender's shares at once; sets it SHARED.

        DUPLICATE if the same set was stored; CONFLICT if a different set was.
        """

    @abc.abstractmethod
    def list_shares(self, round_id: str) -> list[ShareRecord]:
        """By (sender, recipient)."""

    @abc.abstractmethod
    def add_input_chunk(self, record: InputChunkRecord) -> AddResult:
        """Phase MASKED_INPUT: the receipt of one durable chunk (by index and digest)."""

    @abc.abstractmethod
    def list_input_chunks(
        self, round_id: str, secagg_id: int | None = None
    ) -> list[InputChunkRecord]:
        """By (secagg id, chunk index); one participant's if ``secagg_id`` is given."""

    @abc.abstractmethod
    def mark_input_complete(self, round_id: str, secagg_id: int) -> AddResult:
        """Phase MASKED_INPUT: the participant's whole input is durable; sets it UPLOADED.

        DUPLICATE if it already was.
        """

    @abc.abstractmethod
    def add_consistency_signature(self, record: ConsistencySignatureRecord) -> AddResult:
        """Phase CONSISTENCY_CHECK; sets the participant SIGNED."""

    @abc.abstractmethod
    def list_consistency_signatures(self, round_id: str) -> list[ConsistencySignatureRecord]:
        """By secagg id."""

    @abc.abstractmethod
    def add_unmask_response(self, record: UnmaskRecord) -> AddResult:
        """Phase UNMASKING; sets the participant UNMASKED."""

    @abc.abstractmethod
    def list_unmask_responses(self, round_id: str) -> list[UnmaskRecord]:
        """By secagg id."""

    @abc.abstractmethod
    def drop_participant(self, round_id: str, secagg_id: int, *, reason: str) -> None:
        """Mark a participant DROPPED in the round's current phase (it left, or misbehaved).

        Keeps an earlier drop's phase and reason. ``NOT_IN_COHORT`` for an unknown id.
        """

    # --- model versions -----------------------------------------------------------------

    @abc.abstractmethod
    def add_initial_version(self, version: ModelVersion) -> AddResult:
        """Store version 0. DUPLICATE if the same version 0 exists; CONFLICT if another does."""

    @abc.abstractmethod
    def latest_version(self) -> ModelVersion | None:
        """The highest version, or None before the first start."""

    @abc.abstractmethod
    def get_version(self, version: int) -> ModelVersion:
        """``NOT_FOUND`` if there is no such version."""

    @abc.abstractmethod
    def list_versions(self) -> list[ModelVersion]:
        """All versions, oldest first."""

    @abc.abstractmethod
    def record_evaluation(self, version: int, *, loss: float, accuracy: float | None) -> None:
        """Attach the held-out evaluation to a version. ``NOT_FOUND``."""

    # --- retention (docs/architecture.md, section 5) -------------------------------------

    @abc.abstractmethod
    def pin_version(self, version: int, *, pinned: bool) -> ModelVersion:
        """Pin (keep its blobs whatever the policy says) or unpin a version.

        ``NOT_FOUND`` if there is no such version, or, when pinning, if the retention policy
        already released its blobs (the message says it was not retained).
        """

    @abc.abstractmethod
    def retire_versions(self, *, keep: int, now: datetime) -> list[ModelVersion]:
        """Release, at ``now``, the blobs of every retained version that is not among the
        ``keep`` newest, not pinned and not trained from by an open round; returns those,
        oldest first. A released version stays listed, with ``blobs_deleted_at`` set.

        The caller deletes the released blobs only after this committed, and only those
        ``retained_blobs`` does not name. ``INVALID_ARGUMENT`` for ``keep < 1``.
        """

    @abc.abstractmethod
    def retained_blobs(self) -> frozenset[str]:
        """The sha256 of every blob that a retained version names."""

    @abc.abstractmethod
    def forget_rounds(self, *, keep: int) -> list[str]:
        """Delete every ended round but the ``keep`` newest, with its participants, phase
        timings and the versions it made whose blobs are released; returns their ids,
        oldest first. A retained version a deleted round made stays, with ``round_id``
        None. ``INVALID_ARGUMENT`` for ``keep < 1``."""

    # --- audit --------------------------------------------------------------------------

    @abc.abstractmethod
    def audit(self, event: AuditEvent) -> None:
        """Append an event to the audit log."""

    @abc.abstractmethod
    def list_audit(self, *, limit: int = 100) -> list[AuditEvent]:
        """The newest events first."""

    @abc.abstractmethod
    def set_note(self, key: str, text: str | None, *, now: datetime) -> None:
        """Keep ``text`` under ``key`` for the admin commands (None: forget it)."""

    @abc.abstractmethod
    def get_note(self, key: str) -> tuple[str, datetime] | None:
        """The text kept under ``key`` and when it was written, if any."""

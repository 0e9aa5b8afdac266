"""Conversions between the store's rows and the domain's frozen dataclasses.

Called inside a session only: what they return holds no reference to a row, so nothing
ORM-bound leaves the store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

from coordinator.domain import (
    AdvertisedKeysRecord,
    AuditEvent,
    Client,
    ConsistencySignatureRecord,
    EnrollmentToken,
    InputChunkRecord,
    ModelVersion,
    Participant,
    PhaseTiming,
    Round,
    ShareRecord,
    UnmaskRecord,
)
from coordinator.store.tables import (
    AdvertisedKeysRow,
    AuditRow,
    ClientRow,
    ConsistencySignatureRow,
    InputChunkRow,
    ModelVersionRow,
    ParticipantRow,
    PhaseTimingRow,
    RoundRow,
    ShareRow,
    TokenRow,
    UnmaskShareRow,
)

__all__ = [
    "SECRET_KEY",
    "SELF_MASK",
    "advertised_keys_from_row",
    "audit_from_row",
    "client_from_row",
    "consistency_signature_from_row",
    "input_chunk_from_row",
    "participant_from_row",
    "phase_timing_from_row",
    "round_from_row",
    "round_to_row",
    "share_from_row",
    "token_from_row",
    "unmask_from_rows",
    "version_from_row",
    "version_to_row",
]

SELF_MASK = "b"  # unmask_shares.kind of a share of the owner's self-mask seed b
SECRET_KEY = "s"  # unmask_shares.kind of a share of the owner's masking key s_sk


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: datetime | None) -> datetime | None:
    """A time as UTC: a row written in this session still holds the caller's zone."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def token_from_row(row: TokenRow) -> EnrollmentToken:
    return EnrollmentToken(
        token_hash=row.token_hash,
        created_at=_utc(row.created_at),
        expires_at=_utc(row.expires_at),
        used_at=_utc(row.used_at),
        client_id=row.client_id,
    )


def client_from_row(row: ClientRow) -> Client:
    return Client(
        client_id=row.client_id,
        identity_key=bytes(row.identity_key),
        label=row.label,
        certificate_pem=bytes(row.certificate_pem),
        certificate_serial=int(row.certificate_serial),
        enrolled_at=_utc(row.enrolled_at),
        revoked_at=_utc(row.revoked_at),
    )


def round_from_row(row: RoundRow) -> Round:
    return Round(
        round_id=row.round_id,
        number=row.number,
        model_version=row.model_version,
        phase=row.phase,
        outcome=row.outcome,
        config=row.config,
        started_at=_utc(row.started_at),
        deadline=_utc(row.deadline),
        finished_at=_utc(row.finished_at),
        abort_reason=row.abort_reason,
        survivors=row.survivors,
    )


def round_to_row(round_: Round) -> RoundRow:
    return RoundRow(
        round_id=round_.round_id,
        number=round_.number,
        model_version=round_.model_version,
        phase=round_.phase,
        outcome=round_.outcome,
        config=round_.config,
        started_at=round_.started_at,
        deadline=round_.deadline,
        finished_at=round_.finished_at,
        abort_reason=round_.abort_reason,
        survivors=round_.survivors,
    )


def participant_from_row(row: ParticipantRow) -> Participant:
    return Participant(
        round_id=row.round_id,
        client_id=row.client_id,
        secagg_id=row.secagg_id,
        status=row.status,
        dropped_in=row.dropped_in,
        drop_reason=row.drop_reason,
        input_complete=row.input_complete,
    )


def phase_timing_from_row(row: PhaseTimingRow) -> PhaseTiming:
    return PhaseTiming(
        round_id=row.round_id,
        phase=row.phase,
        started_at=_utc(row.started_at),
        closed_at=_utc(row.closed_at),
        alive=row.alive,
    )


def version_from_row(row: ModelVersionRow) -> ModelVersion:
    return ModelVersion(
        version=row.version,
        created_at=_utc(row.created_at),
        model_sha256=row.model_sha256,
        global_update_sha256=row.global_update_sha256,
        second_moment_sha256=row.second_moment_sha256,
        global_step=row.global_step,
        layout_fingerprint=row.layout_fingerprint,
        round_id=row.round_id,
        num_clients=row.num_clients,
        test_loss=row.test_loss,
        test_accuracy=row.test_accuracy,
        pinned=row.pinned,
        blobs_deleted_at=_utc(row.blobs_deleted_at),
    )


def version_to_row(version: ModelVersion) -> ModelVersionRow:
    return ModelVersionRow(
        version=version.version,
        created_at=version.created_at,
        model_sha256=version.model_sha256,
        global_update_sha256=version.global_update_sha256,
        second_moment_sha256=version.second_moment_sha256,
        global_step=version.global_step,
        layout_fingerprint=version.layout_fingerprint,
        round_id=version.round_id,
        num_clients=version.num_clients,
        test_loss=version.test_loss,
        test_accuracy=version.test_accuracy,
        pinned=version.pinned,
        blobs_deleted_at=version.blobs_deleted_at,
    )


def advertised_keys_from_row(row: AdvertisedKeysRow) -> AdvertisedKeysRecord:
    return AdvertisedKeysRecord(
        round_id=row.round_id,
        secagg_id=row.secagg_id,
        encryption_key=bytes(row.encryption_key),
        masking_key=bytes(row.masking_key),
        self_mask_commitment=bytes(row.self_mask_commitment or b""),
        signature=bytes(row.signature),
    )


def share_from_row(row: ShareRow) -> ShareRecord:
    return ShareRecord(
        round_id=row.round_id,
        sender=row.sender,
        recipient=row.recipient,
        ciphertext=bytes(row.ciphertext),
    )


def input_chunk_from_row(row: InputChunkRow) -> InputChunkRecord:
    return InputChunkRecord(
        round_id=row.round_id,
        secagg_id=row.secagg_id,
        chunk_index=row.chunk_index,
        sha256=row.sha256,
    )


def consistency_signature_from_row(row: ConsistencySignatureRow) -> ConsistencySignatureRecord:
    return ConsistencySignatureRecord(
        round_id=row.round_id, secagg_id=row.secagg_id, signature=bytes(row.signature)
    )


def unmask_from_rows(round_id: str, secagg_id: int, rows: list[UnmaskShareRow]) -> UnmaskRecord:
    """One participant's response from its revealed shares, each kind ordered by owner."""
    ordered = sorted(rows, key=lambda row: row.owner)
    return UnmaskRecord(
        round_id=round_id,
        secagg_id=secagg_id,
        self_mask_shares=tuple((r.owner, bytes(r.share)) for r in ordered if r.kind == SELF_MASK),
        key_shares=tuple((r.owner, bytes(r.share)) for r in ordered if r.kind == SECRET_KEY),
    )


def audit_from_row(row: AuditRow) -> AuditEvent:
    return AuditEvent(
        at=_utc(row.at),
        actor=row.actor,
        action=row.action,
        detail=row.detail,
        event_id=row.event_id,
    )

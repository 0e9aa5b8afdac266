"""Secure-aggregation records in SQL: the idempotent ``add_*`` writes and their listings.

Every ``add_*`` runs in the caller's write transaction and first calls
``sql_guards.writable_participant``, which locks the round row and checks the phase and
the participant, so a record is never stored after its phase closed. Records are then
inserted once (``sql_guards.insert_once``): the same record again is ``DUPLICATE``, a
different one under the same key is ``CONFLICT``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.domain import (
    AddResult,
    AdvertisedKeysRecord,
    ConsistencySignatureRecord,
    InputChunkRecord,
    ParticipantStatus,
    RoundPhase,
    ShareRecord,
    UnmaskRecord,
)
from coordinator.errors import ErrorCode, StoreError
from coordinator.store.rows import (
    SECRET_KEY,
    SELF_MASK,
    advertised_keys_from_row,
    consistency_signature_from_row,
    input_chunk_from_row,
    share_from_row,
    unmask_from_rows,
)
from coordinator.store.sql_guards import insert_once, require_sha256, writable_participant
from coordinator.store.tables import (
    AdvertisedKeysRow,
    ConsistencySignatureRow,
    InputChunkRow,
    ParticipantRow,
    ShareRow,
    UnmaskResponseRow,
    UnmaskShareRow,
)

__all__ = [
    "add_advertised_keys",
    "add_consistency_signature",
    "add_input_chunk",
    "add_shares",
    "add_unmask_response",
    "list_advertised_keys",
    "list_consistency_signatures",
    "list_input_chunks",
    "list_shares",
    "list_unmask_responses",
    "mark_input_complete",
]


def add_advertised_keys(session: Session, record: AdvertisedKeysRecord) -> AddResult:
    """See ``Store.add_advertised_keys``."""
    participant = writable_participant(
        session, record.round_id, record.secagg_id, RoundPhase.ADVERTISE_KEYS
    )
    key = (record.round_id, record.secagg_id)
    result = insert_once(
        session,
        [
            AdvertisedKeysRow(
                round_id=record.round_id,
                secagg_id=record.secagg_id,
                encryption_key=record.encryption_key,
                masking_key=record.masking_key,
                self_mask_commitment=record.self_mask_commitment,
                signature=record.signature,
            )
        ],
        stored=lambda: session.get(AdvertisedKeysRow, key),
        same=lambda row: advertised_keys_from_row(row) == record,
        what=f"key advertisement of secagg id {record.secagg_id}",
    )
    if result is AddResult.ADDED:
        participant.status = ParticipantStatus.ADVERTISED
    return result


def add_shares(
    session: Session, round_id: str, sender: int, shares: Sequence[ShareRecord]
) -> AddResult:
    """See ``Store.add_shares``. ``INVALID_ARGUMENT`` for an empty set, shares of another
    round or sender, a recipient named twice, or a recipient outside the cohort."""
    if not shares:
        raise StoreError(ErrorCode.INVALID_ARGUMENT, f"secagg id {sender} sent no shares")
    if any(s.round_id != round_id or s.sender != sender for s in shares):
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT,
            f"add_shares for sender {sender} of round {round_id} got another's share",
        )
    incoming = {s.recipient: bytes(s.ciphertext) for s in shares}
    if len(incoming) != len(shares):
        raise StoreError(ErrorCode.INVALID_ARGUMENT, f"secagg id {sender} repeats a recipient")
    participant = writable_participant(session, round_id, sender, RoundPhase.SHARE_KEYS)
    _require_in_cohort(session, round_id, incoming, role="recipient")

    def stored() -> dict[int, bytes] | None:
        rows = session.scalars(
            select(ShareRow).where(ShareRow.round_id == round_id, ShareRow.sender == sender)
        ).all()
        return {row.recipient: bytes(row.ciphertext) for row in rows} or None

    what = f"set of shares from secagg id {sender}"
    existing = stored()  # a set with other recipients would violate no key: compare first
    if existing is not None:
        if existing == incoming:
            return AddResult.DUPLICATE
        raise StoreError(ErrorCode.CONFLICT, f"a different {what} is already stored")
    rows = [
        {"round_id": round_id, "sender": sender, "recipient": recipient, "ciphertext": data}
        for recipient, data in sorted(incoming.items())
    ]
    result = insert_once(
        session,
        [],
        bulk=[(ShareRow, rows)],
        stored=stored,
        same=lambda stored_set: stored_set == incoming,
        what=what,
    )
    if result is AddResult.ADDED:
        participant.status = ParticipantStatus.SHARED
    return result


def add_input_chunk(session: Session, record: InputChunkRecord) -> AddResult:
    """See ``Store.add_input_chunk``. ``INVALID_ARGUMENT`` for a negative index or a
    malformed digest; ``CONFLICT`` for a new chunk once the input was marked complete."""
    if record.chunk_index < 0:
        raise StoreError(ErrorCode.INVALID_ARGUMENT, f"chunk index {record.chunk_index} < 0")
    require_sha256("chunk sha256", record.sha256)
    participant = writable_participant(
        session, record.round_id, record.secagg_id, RoundPhase.MASKED_INPUT
    )
    key = (record.round_id, record.secagg_id, record.chunk_index)
    what = f"chunk {record.chunk_index} of secagg id {record.secagg_id}"
    if participant.input_complete:
        row = session.get(InputChunkRow, key)
        if row is None:
            raise StoreError(
                ErrorCode.CONFLICT,
                f"{what} arrived after secagg id {record.secagg_id}'s input was complete",
            )
        if input_chunk_from_row(row) == record:
            return AddResult.DUPLICATE
        raise StoreError(ErrorCode.CONFLICT, f"a different {what} is already stored")
    return insert_once(
        session,
        [
            InputChunkRow(
                round_id=record.round_id,
                secagg_id=record.secagg_id,
                chunk_index=record.chunk_index,
                sha256=record.sha256,
            )
        ],
        stored=lambda: session.get(InputChunkRow, key),
        same=lambda row: input_chunk_from_row(row) == record,
        what=what,
    )


def mark_input_complete(session: Session, round_id: str, secagg_id: int) -> AddResult:
    """See ``Store.mark_input_complete``."""
    participant = writable_participant(session, round_id, secagg_id, RoundPhase.MASKED_INPUT)
    if participant.input_complete:
        return AddResult.DUPLICATE
    participant.input_complete = True
    participant.status = ParticipantStatus.UPLOADED
    return AddResult.ADDED


def add_consistency_signature(session: Session, record: ConsistencySignatureRecord) -> AddResult:
    """See ``Store.add_consistency_signature``."""
    participant = writable_participant(
        session, record.round_id, record.secagg_id, RoundPhase.CONSISTENCY_CHECK
    )
    key = (record.round_id, record.secagg_id)
    result = insert_once(
        session,
        [
            ConsistencySignatureRow(
                round_id=record.round_id, secagg_id=record.secagg_id, signature=record.signature
            )
        ],
        stored=lambda: session.get(ConsistencySignatureRow, key),
        same=lambda row: consistency_signature_from_row(row) == record,
        what=f"consistency signature of secagg id {record.secagg_id}",
    )
    if result is AddResult.ADDED:
        participant.status = ParticipantStatus.SIGNED
    return result


def add_unmask_response(session: Session, record: UnmaskRecord) -> AddResult:
    """See ``Store.add_unmask_response``. Shares are compared and listed ordered by owner.
    ``INVALID_ARGUMENT`` if an owner appears twice (both kinds count: never both for one
    neighbour) or is outside the cohort."""
    owners = [owner for owner, _ in (*record.self_mask_shares, *record.key_shares)]
    if len(set(owners)) != len(owners):
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT,
            f"secagg id {record.secagg_id} reveals more than one share of an owner",
        )
    participant = writable_participant(
        session, record.round_id, record.secagg_id, RoundPhase.UNMASKING
    )
    _require_in_cohort(session, record.round_id, owners, role="share owner")
    canonical = _canonical_unmask(record)

    def stored() -> UnmaskRecord | None:
        if session.get(UnmaskResponseRow, (record.round_id, record.secagg_id)) is None:
            return None
        return _unmask_record(session, record.round_id, record.secagg_id)

    shares = [
        {
            "round_id": record.round_id,
            "holder": record.secagg_id,
            "owner": owner,
            "kind": kind,
            "share": bytes(share),
        }
        for kind, pairs in ((SELF_MASK, record.self_mask_shares), (SECRET_KEY, record.key_shares))
        for owner, share in pairs
    ]
    result = insert_once(
        session,
        [UnmaskResponseRow(round_id=record.round_id, secagg_id=record.secagg_id)],
        bulk=[(UnmaskShareRow, shares)],
        stored=stored,
        same=lambda stored_record: stored_record == canonical,
        what=f"unmask response of secagg id {record.secagg_id}",
    )
    if result is AddResult.ADDED:
        participant.status = ParticipantStatus.UNMASKED
    return result


def _canonical_unmask(record: UnmaskRecord) -> UnmaskRecord:
    """``record`` as the store returns it: bytes, and each kind ordered by owner."""
    return UnmaskRecord(
        round_id=record.round_id,
        secagg_id=record.secagg_id,
        self_mask_shares=tuple(sorted((o, bytes(s)) for o, s in record.self_mask_shares)),
        key_shares=tuple(sorted((o, bytes(s)) for o, s in record.key_shares)),
    )


def _require_in_cohort(
    session: Session, round_id: str, secagg_ids: Iterable[int], *, role: str
) -> None:
    wanted = set(secagg_ids)
    if not wanted:
        return
    found = set(
        session.scalars(
            select(ParticipantRow.secagg_id).where(
                ParticipantRow.round_id == round_id, ParticipantRow.secagg_id.in_(wanted)
            )
        ).all()
    )
    missing = sorted(wanted - found)
    if missing:
        raise StoreError(
            ErrorCode.INVALID_ARGUMENT,
            f"{role} secagg ids {missing} are not in round {round_id}'s cohort",
        )


# --- listings -------------------------------------------------------------------------


def list_advertised_keys(session: Session, round_id: str) -> list[AdvertisedKeysRecord]:
    rows = session.scalars(
        select(AdvertisedKeysRow)
        .where(AdvertisedKeysRow.round_id == round_id)
        .order_by(AdvertisedKeysRow.secagg_id)
    ).all()
    return [advertised_keys_from_row(row) for row in rows]


def list_shares(session: Session, round_id: str) -> list[ShareRecord]:
    rows = session.scalars(
        select(ShareRow)
        .where(ShareRow.round_id == round_id)
        .order_by(ShareRow.sender, ShareRow.recipient)
    ).all()
    return [share_from_row(row) for row in rows]


def list_input_chunks(
    session: Session, round_id: str, secagg_id: int | None
) -> list[InputChunkRecord]:
    query = select(InputChunkRow).where(InputChunkRow.round_id == round_id)
    if secagg_id is not None:
        query = query.where(InputChunkRow.secagg_id == secagg_id)
    rows = session.scalars(query.order_by(InputChunkRow.secagg_id, InputChunkRow.chunk_index)).all()
    return [input_chunk_from_row(row) for row in rows]


def list_consistency_signatures(
    session: Session, round_id: str
) -> list[ConsistencySignatureRecord]:
    rows = session.scalars(
        select(ConsistencySignatureRow)
        .where(ConsistencySignatureRow.round_id == round_id)
        .order_by(ConsistencySignatureRow.secagg_id)
    ).all()
    return [consistency_signature_from_row(row) for row in rows]


def list_unmask_responses(session: Session, round_id: str) -> list[UnmaskRecord]:
    holders = session.scalars(
        select(UnmaskResponseRow.secagg_id)
        .where(UnmaskResponseRow.round_id == round_id)
        .order_by(UnmaskResponseRow.secagg_id)
    ).all()
    shares: dict[int, list[UnmaskShareRow]] = {holder: [] for holder in holders}
    for row in session.scalars(
        select(UnmaskShareRow).where(UnmaskShareRow.round_id == round_id)
    ).all():
        shares[row.holder].append(row)
    return [unmask_from_rows(round_id, holder, shares[holder]) for holder in holders]


def _unmask_record(session: Session, round_id: str, secagg_id: int) -> UnmaskRecord:
    rows = session.scalars(
        select(UnmaskShareRow).where(
            UnmaskShareRow.round_id == round_id, UnmaskShareRow.holder == secagg_id
        )
    ).all()
    return unmask_from_rows(round_id, secagg_id, list(rows))

"""Enrollment in SQL: tokens, spending one on a new client, and revocation.

Each function runs inside the caller's write transaction. ``enroll`` locks the token row
(``SELECT ... FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite), so two devices
racing one token cannot both spend it; the unique identity key settles two tokens racing
for one device.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from coordinator.domain import Client, EnrollmentToken
from coordinator.errors import ErrorCode, StoreError
from coordinator.store.base import IssueCertificate
from coordinator.store.rows import client_from_row
from coordinator.store.sql_guards import require_aware, require_sha256
from coordinator.store.tables import ClientRow, TokenRow

__all__ = ["client_row", "create_token", "enroll", "revoke_client"]


def create_token(session: Session, token: EnrollmentToken) -> None:
    """See ``Store.create_token``; ``INVALID_ARGUMENT`` for a malformed or used token."""
    require_sha256("token hash", token.token_hash)
    if token.used_at is not None or token.client_id is not None:
        raise StoreError(ErrorCode.INVALID_ARGUMENT, "a new token cannot be used already")
    if session.get(TokenRow, token.token_hash) is not None:
        raise StoreError(ErrorCode.CONFLICT, "an enrollment token with this hash exists")
    session.add(
        TokenRow(
            token_hash=token.token_hash, created_at=token.created_at, expires_at=token.expires_at
        )
    )
    session.flush()


def enroll(
    session: Session,
    *,
    token_hash: str,
    identity_key: bytes,
    label: str,
    now: datetime,
    issue_certificate: IssueCertificate,
) -> Client:
    """See ``Store.enroll``. The new client row is flushed first, so the callback gets the
    id the database assigned; if the callback raises, the caller's transaction rolls back."""
    require_aware("now", now)
    identity_key = bytes(identity_key)
    token = session.scalars(
        select(TokenRow).where(TokenRow.token_hash == token_hash).with_for_update()
    ).one_or_none()
    if token is None:
        raise StoreError(ErrorCode.TOKEN_INVALID, "unknown enrollment token")
    if token.used_at is not None or token.client_id is not None:
        spent_by = session.get(ClientRow, token.client_id) if token.client_id is not None else None
        if spent_by is not None and bytes(spent_by.identity_key) == identity_key:
            return client_from_row(spent_by)  # a retry: the first answer was lost
        raise StoreError(ErrorCode.TOKEN_USED, "the enrollment token was used already")
    if now >= token.expires_at:
        raise StoreError(
            ErrorCode.TOKEN_EXPIRED,
            f"the enrollment token expired at {token.expires_at.isoformat()}",
        )
    enrolled = session.scalar(
        select(ClientRow.client_id).where(ClientRow.identity_key == identity_key)
    )
    if enrolled is not None:
        raise StoreError(
            ErrorCode.CONFLICT, f"this identity key is already enrolled as client {enrolled}"
        )
    client = ClientRow(
        identity_key=identity_key,
        label=label,
        certificate_pem=b"",
        certificate_serial="0",
        enrolled_at=now,
    )
    session.add(client)
    session.flush()  # assigns client_id
    certificate_pem, serial = issue_certificate(client.client_id)
    client.certificate_pem = bytes(certificate_pem)
    client.certificate_serial = str(int(serial))
    token.used_at = now
    token.client_id = client.client_id
    session.flush()
    return client_from_row(client)


def client_row(session: Session, client_id: int, *, lock: bool = False) -> ClientRow:
    """The client's row (locked until the transaction ends with ``lock``). ``NOT_FOUND``."""
    query = select(ClientRow).where(ClientRow.client_id == client_id)
    row = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise StoreError(ErrorCode.NOT_FOUND, f"no client {client_id}")
    return row


def revoke_client(session: Session, client_id: int, *, now: datetime) -> Client:
    """See ``Store.revoke_client``."""
    require_aware("now", now)
    row = client_row(session, client_id, lock=True)
    if row.revoked_at is None:
        row.revoked_at = now
        session.flush()
    return client_from_row(row)

"""The coordinator's errors, each with a code that the error catalog maps to a gRPC status.

::

    CoordinatorError(code)
    ├── StoreError: the database refused or failed (NOT_FOUND, CONFLICT, STALE_ROUND,
    │               WRONG_PHASE, SCHEMA_OUTDATED, STORE_UNAVAILABLE, ...)
    ├── BlobError:  the blob store or the spool could not read or write: a full, read-only
    │               or failing disk (STORAGE_UNAVAILABLE, which may clear), or a blob whose
    │               bytes no longer match its name (INTERNAL)
    └── (raised directly with a code by the service, enrollment, PKI and blob store)

Every error carries a message for the operator's log (``str(error)``); what a remote caller
sees is the catalog's public message for the code, so internals never leak over the wire.
"""

from __future__ import annotations

import enum

__all__ = ["BlobError", "CoordinatorError", "ErrorCode", "StoreError"]


class ErrorCode(enum.StrEnum):
    # request problems
    INVALID_ARGUMENT = "invalid_argument"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    # who is calling
    UNAUTHENTICATED = "unauthenticated"
    REVOKED = "revoked"
    NOT_IN_COHORT = "not_in_cohort"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_USED = "token_used"
    # round state
    STALE_ROUND = "stale_round"
    WRONG_PHASE = "wrong_phase"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    PROTOCOL_VIOLATION = "protocol_violation"
    # the service itself
    SCHEMA_OUTDATED = "schema_outdated"
    STORE_UNAVAILABLE = "store_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INTERNAL = "internal"


class CoordinatorError(Exception):
    """A coordinator failure with a code; ``str()`` is the operator-facing message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class StoreError(CoordinatorError):
    """The store could not do what was asked; the code says why."""


class BlobError(CoordinatorError):
    """A blob or spool file could not be read or written (the disk, not the request)."""

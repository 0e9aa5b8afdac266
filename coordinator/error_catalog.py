"""The one place where errors become gRPC statuses.

Each ``ErrorCode`` maps to a status and a public message. A remote caller sees the public
message; for codes about its own request (``detail`` true) the error's message follows it,
since it names the caller's mistake. Internal failures never show their message: the log
has it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from coordinator.errors import CoordinatorError, ErrorCode

__all__ = ["CATALOG", "Entry", "status_for"]


@dataclass(frozen=True)
class Entry:
    status: grpc.StatusCode
    public: str
    detail: bool


_S = grpc.StatusCode

CATALOG: dict[ErrorCode, Entry] = {
    ErrorCode.INVALID_ARGUMENT: Entry(_S.INVALID_ARGUMENT, "invalid request", True),
    ErrorCode.TOO_LARGE: Entry(_S.RESOURCE_EXHAUSTED, "request over a limit", True),
    ErrorCode.RATE_LIMITED: Entry(_S.RESOURCE_EXHAUSTED, "too many requests; slow down", False),
    ErrorCode.UNAUTHENTICATED: Entry(
        _S.UNAUTHENTICATED, "a client certificate from this coordinator is required", False
    ),
    ErrorCode.REVOKED: Entry(_S.PERMISSION_DENIED, "this client's enrollment is revoked", False),
    ErrorCode.NOT_IN_COHORT: Entry(_S.PERMISSION_DENIED, "not a participant of the round", True),
    ErrorCode.TOKEN_INVALID: Entry(
        _S.PERMISSION_DENIED, "the enrollment token is not valid", False
    ),
    ErrorCode.TOKEN_EXPIRED: Entry(_S.PERMISSION_DENIED, "the enrollment token has expired", False),
    ErrorCode.TOKEN_USED: Entry(
        _S.PERMISSION_DENIED, "the enrollment token was already used", False
    ),
    ErrorCode.STALE_ROUND: Entry(_S.FAILED_PRECONDITION, "the round is not open", True),
    ErrorCode.WRONG_PHASE: Entry(_S.FAILED_PRECONDITION, "the round is in another phase", True),
    ErrorCode.NOT_FOUND: Entry(_S.NOT_FOUND, "not found", True),
    ErrorCode.CONFLICT: Entry(_S.ALREADY_EXISTS, "conflicts with what was received before", True),
    ErrorCode.PROTOCOL_VIOLATION: Entry(
        _S.INVALID_ARGUMENT, "the secure-aggregation message was refused", True
    ),
    ErrorCode.SCHEMA_OUTDATED: Entry(_S.UNAVAILABLE, "the service is not ready", False),
    ErrorCode.STORE_UNAVAILABLE: Entry(
        _S.UNAVAILABLE, "the service is temporarily unavailable; retry", False
    ),
    ErrorCode.STORAGE_UNAVAILABLE: Entry(
        _S.UNAVAILABLE,
        "the coordinator cannot store data now (its storage is full or failing); retry later",
        False,
    ),
    ErrorCode.INTERNAL: Entry(_S.INTERNAL, "internal error", False),
}


def status_for(error: CoordinatorError) -> tuple[grpc.StatusCode, str]:
    """The status and the message a remote caller may see for ``error``."""
    entry = CATALOG[error.code]
    if entry.detail:
        return entry.status, f"{entry.public}: {error.message}"
    return entry.status, entry.public

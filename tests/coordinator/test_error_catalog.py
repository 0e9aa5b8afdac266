"""The error catalog: every code maps to a status, and a remote caller sees only what it may."""

from __future__ import annotations

import grpc
import pytest

from coordinator.error_catalog import CATALOG, status_for
from coordinator.errors import CoordinatorError, ErrorCode, StoreError

S = grpc.StatusCode
SECRET = "/var/lib/fedadamw/coordinator.db: disk I/O error at page 7"

# Failures of the service itself: the caller learns that it failed, never how.
INTERNAL_CODES = {
    ErrorCode.INTERNAL,
    ErrorCode.SCHEMA_OUTDATED,
    ErrorCode.STORE_UNAVAILABLE,
    ErrorCode.STORAGE_UNAVAILABLE,
}
# Who is calling and how fast: the public message alone, so that nothing helps a prober.
OPAQUE_CODES = {
    ErrorCode.RATE_LIMITED,
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.REVOKED,
    ErrorCode.TOKEN_INVALID,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.TOKEN_USED,
}

# The statuses docs/architecture.md, section 6, and the wire contract promise.
EXPECTED_STATUS = {
    ErrorCode.INVALID_ARGUMENT: S.INVALID_ARGUMENT,
    ErrorCode.TOO_LARGE: S.RESOURCE_EXHAUSTED,
    ErrorCode.RATE_LIMITED: S.RESOURCE_EXHAUSTED,
    ErrorCode.UNAUTHENTICATED: S.UNAUTHENTICATED,
    ErrorCode.REVOKED: S.PERMISSION_DENIED,
    ErrorCode.NOT_IN_COHORT: S.PERMISSION_DENIED,
    ErrorCode.TOKEN_INVALID: S.PERMISSION_DENIED,
    ErrorCode.TOKEN_EXPIRED: S.PERMISSION_DENIED,
    ErrorCode.TOKEN_USED: S.PERMISSION_DENIED,
    ErrorCode.STALE_ROUND: S.FAILED_PRECONDITION,
    ErrorCode.WRONG_PHASE: S.FAILED_PRECONDITION,
    ErrorCode.NOT_FOUND: S.NOT_FOUND,
    ErrorCode.CONFLICT: S.ALREADY_EXISTS,
    ErrorCode.PROTOCOL_VIOLATION: S.INVALID_ARGUMENT,
    ErrorCode.SCHEMA_OUTDATED: S.UNAVAILABLE,
    ErrorCode.STORE_UNAVAILABLE: S.UNAVAILABLE,
    ErrorCode.STORAGE_UNAVAILABLE: S.UNAVAILABLE,
    ErrorCode.INTERNAL: S.INTERNAL,
}


def test_every_code_has_an_entry() -> None:
    assert set(CATALOG) == set(ErrorCode)
    assert set(EXPECTED_STATUS) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_code_maps_to_its_status(code: ErrorCode) -> None:
    status, message = status_for(CoordinatorError(code, "what went wrong"))
    assert status is EXPECTED_STATUS[code]
    assert status not in {S.OK, S.UNKNOWN}
    assert message.startswith(CATALOG[code].public)
    assert CATALOG[code].public.strip()


@pytest.mark.parametrize("code", sorted(INTERNAL_CODES | OPAQUE_CODES))
def test_internal_and_identity_codes_never_show_their_message(code: ErrorCode) -> None:
    for error in (CoordinatorError(code, SECRET), StoreError(code, SECRET)):
        status, message = status_for(error)
        assert status is EXPECTED_STATUS[code]
        assert message == CATALOG[code].public
        assert "disk" not in message
        assert "/var/lib" not in message
    assert not CATALOG[code].detail


@pytest.mark.parametrize("code", sorted(set(ErrorCode) - INTERNAL_CODES - OPAQUE_CODES))
def test_client_facing_codes_name_the_callers_mistake(code: ErrorCode) -> None:
    detail = "session_id must be 32 bytes, got 5"
    status, message = status_for(CoordinatorError(code, detail))
    assert CATALOG[code].detail
    assert message == f"{CATALOG[code].public}: {detail}"
    assert status not in {S.INTERNAL, S.UNAVAILABLE}


def test_internal_statuses_come_only_from_internal_codes() -> None:
    for code, entry in CATALOG.items():
        if entry.status in {S.INTERNAL, S.UNAVAILABLE}:
            assert code in INTERNAL_CODES, code

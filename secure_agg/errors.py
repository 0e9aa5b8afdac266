"""The one error type of the ``secure_agg`` package.

Every error the package raises on purpose is a :class:`SecAggError`; its ``code`` (an
:class:`ErrorCode`) says which kind, so the coordinator can map codes one-to-one onto gRPC
status codes and metric labels::

    Exception
    └── SecAggError (code: ErrorCode)
        ├── INVALID_PARAMETERS     parameters or a layout that cannot work (e.g. could overflow)
        ├── INVALID_INPUT          a vector of the wrong shape, dtype or with NaN
        ├── INVALID_MESSAGE        a message that is malformed, from a stranger, or to a stranger
        ├── UNEXPECTED_MESSAGE     a message the current phase does not expect
        ├── WRONG_SESSION          a message for another round or session
        ├── CONFLICTING_MESSAGE    a second, different message from one client in one phase
        ├── TOO_MANY_CLIENTS       more clients than the parameters allow
        ├── BAD_SIGNATURE          an Ed25519 signature that does not verify
        ├── DECRYPTION_FAILED      an AES-GCM tag that does not verify
        ├── KEY_AGREEMENT_FAILED   an X25519 public key of small order
        ├── TOO_FEW_SHARES         fewer Shamir shares than the threshold
        └── INCONSISTENT_SHARES    Shamir shares that do not lie on one polynomial

A protocol *abort* (a lying server, too few survivors) is not an exception: the state
machines move to an aborted state carrying an :class:`~secure_agg.reasons.AbortReason`.
Exceptions are for callers that break a contract, and for primitives whose failure the
caller turns into an abort.
"""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "SecAggError"]


class ErrorCode(enum.StrEnum):
    """What kind of failure a :class:`SecAggError` reports."""

    INVALID_PARAMETERS = "invalid_parameters"
    INVALID_INPUT = "invalid_input"
    INVALID_MESSAGE = "invalid_message"
    UNEXPECTED_MESSAGE = "unexpected_message"
    WRONG_SESSION = "wrong_session"
    CONFLICTING_MESSAGE = "conflicting_message"
    TOO_MANY_CLIENTS = "too_many_clients"
    BAD_SIGNATURE = "bad_signature"
    DECRYPTION_FAILED = "decryption_failed"
    KEY_AGREEMENT_FAILED = "key_agreement_failed"
    TOO_FEW_SHARES = "too_few_shares"
    INCONSISTENT_SHARES = "inconsistent_shares"


class SecAggError(Exception):
    """A failure inside ``secure_agg``; ``code`` says which kind, ``message`` what to do.

    ``culprits`` names the clients proven to have caused it, where that is known (for
    ``INCONSISTENT_SHARES``: the clients whose revealed shares are forged).
    """

    def __init__(
        self, code: ErrorCode, message: str, *, culprits: frozenset[int] = frozenset()
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.culprits = culprits

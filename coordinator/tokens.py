"""Enrollment tokens: minting, hashing and the operator's time-to-live syntax.

A token is ``fedadamw_`` followed by 43 URL-safe base64 characters (32 random bytes from
:mod:`secrets`). The prefix makes a leaked token recognisable to secret scanners and to a
human reading a log. Only :func:`hash_token` of a token (sha256, lowercase hex) is ever
stored; the token itself is shown once, to the operator who made it.

:func:`parse_ttl` reads the operator's ``--ttl`` text (``"90s"``, ``"30m"``, ``"24h"``,
``"7d"``) and raises :class:`~coordinator.errors.CoordinatorError` with
``INVALID_ARGUMENT`` on anything else, zero included.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from coordinator.errors import CoordinatorError, ErrorCode

__all__ = ["DEFAULT_TTL", "TOKEN_PREFIX", "hash_token", "new_token", "parse_ttl"]

TOKEN_PREFIX = "fedadamw_"
DEFAULT_TTL = timedelta(hours=24)

_TOKEN_RANDOM_BYTES = 32
# An upper bound keeps timedelta arithmetic far from OverflowError on absurd input.
_MAX_TTL = timedelta(days=3650)
_TTL_RE = re.compile(r"(?P<amount>[0-9]{1,9})(?P<unit>[smhd])")
_UNITS = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}


def new_token() -> str:
    """A fresh single-use enrollment token: ``fedadamw_`` + 32 random bytes, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_RANDOM_BYTES)


def hash_token(token: str) -> str:
    """The stored form of ``token``: sha256 of its UTF-8 bytes, 64 lowercase hex chars."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_ttl(text: str) -> timedelta:
    """Parse a time-to-live such as ``"90s"``, ``"30m"``, ``"24h"`` or ``"7d"``.

    One positive integer and one unit (s, m, h, d); surrounding whitespace is ignored.
    Raises ``CoordinatorError(INVALID_ARGUMENT)`` on any other form, on zero, and on more
    than ten years.
    """
    match = _TTL_RE.fullmatch(text.strip())
    if match is None:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"invalid time-to-live {text!r}: write a positive whole number and a unit "
            "s, m, h or d, e.g. '90s', '30m', '24h' or '7d'",
        )
    ttl = int(match["amount"]) * _UNITS[match["unit"]]
    if ttl <= timedelta(0):
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"invalid time-to-live {text!r}: it must be positive, e.g. '24h'",
        )
    if ttl > _MAX_TTL:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"invalid time-to-live {text!r}: at most 3650d; an enrollment token should "
            "expire soon, e.g. '24h'",
        )
    return ttl

"""Enrollment tokens: randomness, prefix, hashing and the TTL syntax."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest

from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.tokens import DEFAULT_TTL, TOKEN_PREFIX, hash_token, new_token, parse_ttl


def test_new_token_is_prefixed_url_safe_and_long() -> None:
    token = new_token()
    assert token.startswith("fedadamw_")
    assert TOKEN_PREFIX == "fedadamw_"
    body = token.removeprefix(TOKEN_PREFIX)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", body)
    # 32 random bytes in unpadded base64 are 43 characters.
    assert len(body) >= 43


def test_new_tokens_differ() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200


def test_hash_token_is_sha256_hex_of_utf8() -> None:
    token = "fedadamw_ünïcode"
    digest = hash_token(token)
    assert digest == hashlib.sha256(token.encode("utf-8")).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert hash_token(token) == digest
    assert hash_token(token + "x") != digest


def test_default_ttl_is_a_day() -> None:
    assert timedelta(hours=24) == DEFAULT_TTL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        (" 1h\n", timedelta(hours=1)),
        ("3650d", timedelta(days=3650)),
    ],
)
def test_parse_ttl_accepts_amount_and_unit(text: str, expected: timedelta) -> None:
    assert parse_ttl(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "24", "h", "0s", "0d", "-5m", "+5m", "1.5h", "1w", "24H", "1h30m", "1 h", "3651d", "ten"],
)
def test_parse_ttl_refuses_other_forms(text: str) -> None:
    with pytest.raises(CoordinatorError) as info:
        parse_ttl(text)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert "e.g." in str(info.value)

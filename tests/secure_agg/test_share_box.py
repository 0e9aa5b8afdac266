"""Sealed shares: format, authentication, and telling a reflection from corruption."""

from __future__ import annotations

import dataclasses

import pytest

from secure_agg import EncryptedShare, ErrorCode, SecAggError, aead
from secure_agg.shamir import PRIME, encode_share
from secure_agg.share_box import SEALED_SHARE_BYTES, is_reflection, open_share, seal_share

from .harness import seeded_source

KEY = bytes(range(32))
SESSION = b"\x42" * 32


def _seal(sender: int = 3, recipient: int = 8) -> EncryptedShare:
    return seal_share(
        KEY,
        session_id=SESSION,
        sender=sender,
        recipient=recipient,
        self_mask_share=PRIME - 1,
        key_share=12345,
        source=seeded_source("box"),
    )


def test_round_trip_and_fixed_size() -> None:
    share = _seal()
    assert len(share.ciphertext) == SEALED_SHARE_BYTES
    opened = open_share(KEY, share, session_id=SESSION)
    assert (opened.self_mask_share, opened.key_share) == (PRIME - 1, 12345)


@pytest.mark.parametrize(
    "change",
    [
        {"sender": 4},
        {"recipient": 9},
        {"session_id": b"\x43" * 32},
    ],
)
def test_relabelled_envelopes_do_not_authenticate(change: dict[str, object]) -> None:
    share = dataclasses.replace(_seal(), **change)
    with pytest.raises(SecAggError) as caught:
        open_share(KEY, share, session_id=share.session_id)
    assert caught.value.code is ErrorCode.DECRYPTION_FAILED
    assert not is_reflection(KEY, share, session_id=share.session_id)


def test_reflection_is_recognised() -> None:
    mine = _seal(sender=3, recipient=8)
    bounced = dataclasses.replace(mine, sender=8, recipient=3)
    with pytest.raises(SecAggError):
        open_share(KEY, bounced, session_id=SESSION)
    assert is_reflection(KEY, bounced, session_id=SESSION)


def _raw(plaintext: bytes, sender: int = 3, recipient: int = 8) -> EncryptedShare:
    associated = aead.share_associated_data(SESSION, sender=sender, recipient=recipient)
    sealed = aead.seal(KEY, plaintext, associated_data=associated, source=seeded_source("raw"))
    return EncryptedShare(SESSION, sender, recipient, sealed)


@pytest.mark.parametrize(
    "plaintext",
    [
        (3).to_bytes(8, "big") + (8).to_bytes(8, "big") + encode_share(1),  # too short
        (4).to_bytes(8, "big") + (8).to_bytes(8, "big") + encode_share(1) * 2,  # wrong id
        (3).to_bytes(8, "big") + (8).to_bytes(8, "big") + PRIME.to_bytes(32, "little") * 2,
    ],
)
def test_malformed_plaintext_is_refused(plaintext: bytes) -> None:
    with pytest.raises(SecAggError) as caught:
        open_share(KEY, _raw(plaintext), session_id=SESSION)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE

"""AES-256-GCM encryption of Shamir shares.

Contract:

* :func:`seal` returns ``nonce (12 bytes) || ciphertext || tag (16 bytes)``. The nonce is
  drawn from the injected :data:`~secure_agg.randomness.RandomSource`, never from a counter,
  so a re-run of a phase cannot repeat a nonce under one key.
* Keys are 32 bytes, derived per session and pair (``kdf.Purpose.SHARE_ENCRYPTION``); each
  key encrypts about two messages, far below GCM's random-nonce limit of ``2**32``.
* :func:`share_associated_data` binds the session id, the sender and the recipient, so a
  share moved to another session, sender or recipient no longer authenticates.
* :func:`open_sealed` raises :class:`~secure_agg.errors.SecAggError` with
  ``DECRYPTION_FAILED`` when the tag does not verify (wrong key, associated data or
  ciphertext) or the input is too short to hold a nonce and a tag.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.randomness import RandomSource

__all__ = ["NONCE_BYTES", "TAG_BYTES", "open_sealed", "seal", "share_associated_data"]

NONCE_BYTES = 12
TAG_BYTES = 16
_SHARE_LABEL = b"fedadamw-secagg/v1/share"


def share_associated_data(session_id: bytes, *, sender: int, recipient: int) -> bytes:
    """The associated data of a share from ``sender`` to ``recipient`` in one session."""
    return (
        _SHARE_LABEL
        + len(session_id).to_bytes(2, "big")
        + session_id
        + sender.to_bytes(8, "big")
        + recipient.to_bytes(8, "big")
    )


def seal(key: bytes, plaintext: bytes, *, associated_data: bytes, source: RandomSource) -> bytes:
    """Encrypt and authenticate ``plaintext`` under the 32-byte ``key``."""
    nonce = source(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, *, associated_data: bytes) -> bytes:
    """Return the plaintext of :func:`seal`'s output, or raise ``DECRYPTION_FAILED``."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError(ErrorCode.DECRYPTION_FAILED, "sealed share is too short")
    nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, associated_data)
    except InvalidTag as exc:
        raise SecAggError(
            ErrorCode.DECRYPTION_FAILED, "share does not authenticate under the pairwise key"
        ) from exc

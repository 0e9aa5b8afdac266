"""Sealing one client's Shamir shares for one neighbour, and opening them.

Format of a sealed share (:class:`~secure_agg.messages.EncryptedShare` ``ciphertext``,
:data:`SEALED_SHARE_BYTES` bytes): AES-256-GCM (:mod:`secure_agg.aead`) of

    sender id (8 bytes, big-endian) || recipient id (8) || b-share (32) || s_sk-share (32)

under the pairwise key ``HKDF(X25519(c_sender, c_recipient), salt=session id,
info=share-encryption|ids)``, with associated data binding the session id, the sender and
the recipient. The ids inside the plaintext repeat the envelope's, so a share cannot be
re-labelled even by someone holding the key.

:func:`open_share` raises :class:`~secure_agg.errors.SecAggError`: ``DECRYPTION_FAILED``
when the tag does not verify, ``INVALID_MESSAGE`` when the plaintext is not two ids and two
field elements or the ids are not the envelope's.
"""

from __future__ import annotations

import dataclasses

from secure_agg import aead, shamir
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import EncryptedShare
from secure_agg.randomness import RandomSource

__all__ = ["SEALED_SHARE_BYTES", "OpenedShare", "is_reflection", "open_share", "seal_share"]

_ID_BYTES = 8
_PLAINTEXT_BYTES = 2 * _ID_BYTES + 2 * shamir.SHARE_BYTES
SEALED_SHARE_BYTES = aead.NONCE_BYTES + _PLAINTEXT_BYTES + aead.TAG_BYTES


@dataclasses.dataclass(frozen=True)
class OpenedShare:
    """A neighbour's shares of its self-mask secret b and of its masking key s_sk."""

    self_mask_share: int
    key_share: int


def seal_share(
    key: bytes,
    *,
    session_id: bytes,
    sender: int,
    recipient: int,
    self_mask_share: int,
    key_share: int,
    source: RandomSource,
) -> EncryptedShare:
    """Seal ``sender``'s two shares for ``recipient`` under their pairwise ``key``."""
    plaintext = (
        sender.to_bytes(_ID_BYTES, "big")
        + recipient.to_bytes(_ID_BYTES, "big")
        + shamir.encode_share(self_mask_share)
        + shamir.encode_share(key_share)
    )
    associated = aead.share_associated_data(session_id, sender=sender, recipient=recipient)
    ciphertext = aead.seal(key, plaintext, associated_data=associated, source=source)
    return EncryptedShare(
        session_id=session_id, sender=sender, recipient=recipient, ciphertext=ciphertext
    )


def open_share(key: bytes, share: EncryptedShare, *, session_id: bytes) -> OpenedShare:
    """Open a share addressed as ``share.sender`` -> ``share.recipient`` in ``session_id``."""
    associated = aead.share_associated_data(
        session_id, sender=share.sender, recipient=share.recipient
    )
    plaintext = aead.open_sealed(key, share.ciphertext, associated_data=associated)
    if len(plaintext) != _PLAINTEXT_BYTES:
        raise SecAggError(ErrorCode.INVALID_MESSAGE, "a share holds two ids and two elements")
    inner_sender = int.from_bytes(plaintext[:_ID_BYTES], "big")
    inner_recipient = int.from_bytes(plaintext[_ID_BYTES : 2 * _ID_BYTES], "big")
    if (inner_sender, inner_recipient) != (share.sender, share.recipient):
        raise SecAggError(ErrorCode.INVALID_MESSAGE, "the share's ids are not its envelope's")
    body = plaintext[2 * _ID_BYTES :]
    return OpenedShare(
        self_mask_share=shamir.decode_share(body[: shamir.SHARE_BYTES]),
        key_share=shamir.decode_share(body[shamir.SHARE_BYTES :]),
    )


def is_reflection(key: bytes, share: EncryptedShare, *, session_id: bytes) -> bool:
    """Whether ``share`` is really one its recipient sealed for its claimed sender.

    A server that hands a client back its own share, relabelled as coming from the
    neighbour it was meant for, produces a share that fails :func:`open_share` but opens
    with sender and recipient swapped; this tells that apart from plain corruption.
    """
    reflected = dataclasses.replace(share, sender=share.recipient, recipient=share.sender)
    try:
        open_share(key, reflected, session_id=session_id)
    except SecAggError:
        return False
    return True

"""X25519 key agreement and HKDF-SHA256 key derivation.

Contract:

* :func:`generate_private_key` draws a fresh X25519 key from a
  :data:`~secure_agg.randomness.RandomSource`. The key is stored *clamped* (RFC 7748
  section 5) and redrawn in the rare case (probability about ``2**-251``) that the clamped
  scalar is not below ``p = 2**255 - 19``, so :func:`private_scalar` is always a field element
  that Shamir sharing over ``p`` reproduces exactly.
* :func:`agree` returns the 32-byte X25519 shared secret. It raises
  :class:`~secure_agg.errors.SecAggError` with ``KEY_AGREEMENT_FAILED`` for a peer key of
  small order (the all-zero secret) and ``INVALID_MESSAGE`` for a key that is not 32 bytes.
* :func:`check_public_key` refuses, with the same two codes, a key no exchange can use. A
  small-order point makes every exchange give the all-zero secret, so one fixed private key
  finds it: the coordinator calls this when a key is advertised, before anyone relies on it.
* :func:`hkdf` is RFC 5869 HKDF with SHA-256. In this package the salt is always the session
  id and ``info`` names the purpose (:class:`Purpose`) and, for pairwise keys, the two client
  ids in ascending order, so every derived key is bound to one session, one purpose and one
  pair.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.randomness import RandomSource

__all__ = [
    "FIELD_PRIME",
    "KEY_BYTES",
    "Purpose",
    "agree",
    "check_public_key",
    "derive_pair_key",
    "generate_private_key",
    "hkdf",
    "private_key_from_scalar",
    "private_scalar",
    "public_bytes",
    "scalar_matches_public_key",
]

KEY_BYTES = 32
FIELD_PRIME = 2**255 - 19
_ID_BYTES = 8


class Purpose(enum.Enum):
    """The ``info`` label of each derived key; never reuse a label for another job."""

    SHARE_ENCRYPTION = b"fedadamw-secagg/v1/share-encryption"
    PAIR_MASK = b"fedadamw-secagg/v1/pair-mask"
    SELF_MASK = b"fedadamw-secagg/v1/self-mask"
    GRAPH = b"fedadamw-secagg/v1/graph"


def _clamp(raw: bytes) -> int:
    scalar = int.from_bytes(raw, "little")
    scalar &= ~7
    scalar &= (1 << 254) - 1
    scalar |= 1 << 254
    return scalar


def generate_private_key(source: RandomSource) -> X25519PrivateKey:
    """Draw a fresh X25519 private key whose clamped scalar is below ``FIELD_PRIME``."""
    while True:
        scalar = _clamp(source(KEY_BYTES))
        if scalar < FIELD_PRIME:
            return private_key_from_scalar(scalar)


def private_scalar(key: X25519PrivateKey) -> int:
    """The key's clamped scalar as an integer (what Shamir shares)."""
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return _clamp(raw)


def private_key_from_scalar(scalar: int) -> X25519PrivateKey:
    """Rebuild a key from :func:`private_scalar`'s value (any ``0 <= scalar < 2**256``)."""
    if not 0 <= scalar < 1 << 256:
        raise SecAggError(ErrorCode.INVALID_INPUT, "an X25519 scalar must fit in 32 bytes")
    return X25519PrivateKey.from_private_bytes(scalar.to_bytes(KEY_BYTES, "little"))


def scalar_matches_public_key(scalar: int, public: bytes) -> bool:
    """Whether ``scalar`` is exactly the clamped private scalar behind ``public``.

    Exactly: X25519 clamps whatever it is given, so a scalar that differs from the real one
    only in the bits clamping overwrites would still yield ``public``. Every scalar this
    package shares is already clamped, so anything else is not the shared secret.
    """
    if not 0 <= scalar < FIELD_PRIME or scalar != _clamp(scalar.to_bytes(KEY_BYTES, "little")):
        return False
    return public_bytes(private_key_from_scalar(scalar)) == public


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Return the X25519 shared secret of ``private_key`` and the raw ``peer_public`` key."""
    if len(peer_public) != KEY_BYTES:
        raise SecAggError(
            ErrorCode.INVALID_MESSAGE, f"X25519 public keys are 32 bytes, got {len(peer_public)}"
        )
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError(
            ErrorCode.KEY_AGREEMENT_FAILED, "the peer's X25519 public key has small order"
        ) from exc


_PROBE_KEY = X25519PrivateKey.from_private_bytes(bytes(range(1, KEY_BYTES + 1)))


def check_public_key(public: bytes) -> None:
    """Raise unless ``public`` is a 32-byte X25519 key that an exchange can use.

    Any clamped private scalar is a multiple of 8, so a point of small order (1, 2, 4 or 8,
    including the all-zero key) gives the all-zero secret with every private key: one
    exchange with a fixed key finds it. ``KEY_AGREEMENT_FAILED`` for such a key,
    ``INVALID_MESSAGE`` for a wrong length.
    """
    agree(_PROBE_KEY, public)


def hkdf(secret: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """RFC 5869 HKDF-SHA256: ``length`` bytes from ``secret`` with ``salt`` and ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def pair_info(purpose: Purpose, first: int, second: int) -> bytes:
    """``info`` for a pairwise key: the purpose and both client ids, smaller id first."""
    low, high = sorted((first, second))
    return purpose.value + low.to_bytes(_ID_BYTES, "big") + high.to_bytes(_ID_BYTES, "big")


def derive_pair_key(
    private_key: X25519PrivateKey,
    peer_public: bytes,
    *,
    session_id: bytes,
    purpose: Purpose,
    own_id: int,
    peer_id: int,
) -> bytes:
    """``HKDF(X25519(private_key, peer_public), salt=session_id, info=purpose|ids)``, 32 bytes.

    Both ends of a pair derive the same key. Raises like :func:`agree`.
    """
    secret = agree(private_key, peer_public)
    return hkdf(secret, salt=session_id, info=pair_info(purpose, own_id, peer_id))

"""Ed25519 signatures by the clients' long-term identity keys.

The identity key is generated and enrolled outside this package (the agent keeps the
private key on the device; the coordinator knows the public key from enrollment). Here it
signs two things, each with its own domain-separation label:

* :func:`advertise_payload`: the round id, the client id, both fresh X25519 public keys and
  the commitment to the self-mask secret (phase 0), so a server cannot substitute keys or a
  commitment, or replay them into another round;
* :func:`consistency_payload`: the session id and the sorted survivor set ``U3`` (phase 3),
  so honest clients can check they were all told the same survivors.

:func:`verify` raises :class:`~secure_agg.errors.SecAggError` with ``BAD_SIGNATURE`` when
a signature does not verify or a public key is not a valid 32-byte Ed25519 key.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_agg.errors import ErrorCode, SecAggError

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "advertise_payload",
    "consistency_payload",
    "identity_public_bytes",
    "sign",
    "verify",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_ADVERTISE_LABEL = b"fedadamw-secagg/v2/advertise-keys"
_CONSISTENCY_LABEL = b"fedadamw-secagg/v1/consistency"


def identity_public_bytes(identity_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public half of an identity key."""
    return identity_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def sign(identity_key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """A 64-byte Ed25519 signature over ``payload``."""
    return identity_key.sign(payload)


def verify(public_key: bytes, signature: bytes, payload: bytes) -> None:
    """Check ``signature`` over ``payload`` by the raw Ed25519 ``public_key``; raise if bad."""
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, payload)
    except (InvalidSignature, ValueError) as exc:
        raise SecAggError(ErrorCode.BAD_SIGNATURE, "Ed25519 signature does not verify") from exc


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def advertise_payload(
    *,
    round_id: str,
    client_id: int,
    encryption_key: bytes,
    masking_key: bytes,
    self_mask_commitment: bytes,
) -> bytes:
    """What a client signs in phase 0: round, id, both X25519 public keys and the
    commitment to its self-mask secret (:func:`secure_agg.session.commit_self_mask`)."""
    return (
        _ADVERTISE_LABEL
        + _field(round_id.encode("utf-8"))
        + client_id.to_bytes(8, "big")
        + _field(encryption_key)
        + _field(masking_key)
        + _field(self_mask_commitment)
    )


def consistency_payload(*, session_id: bytes, survivors: Iterable[int]) -> bytes:
    """What a client signs in phase 3: the session id and the sorted survivor ids."""
    ids = sorted(survivors)
    body = b"".join(client.to_bytes(8, "big") for client in ids)
    return _CONSISTENCY_LABEL + _field(session_id) + len(ids).to_bytes(4, "big") + body

"""The wire: what the coordinator and the agent must agree on, imported by both.

The two sides never import each other (docs/architecture.md, section 1); everything they
must do the same way is here, once:

- ``wire.v1``: the code generated from the contract ``proto/fedadamw/v1/edge.proto``;
- ``DOWNLOAD_CHUNK_BYTES``: the size of a blob download's chunks (a resumed download names
  the chunk it starts from, so both sides must count chunks alike);
- ``INSECURE_CLIENT_HEADER``: the metadata that names the caller when TLS is off;
- ``REFUSAL_TRAILER``: the trailing metadata with which the coordinator marks its own
  refusals (so an agent tells "the coordinator answered UNAVAILABLE" from "no answer");
- ``enrollment_payload``: what an agent's identity key signs to enroll;
- ``Segment``: the names of the segments of a masked update;
- ``write_atomically`` (``wire.files``): the durable replace of a file, for the
  coordinator's blobs and TLS files and the agent's state directory.

It imports only the standard library and ``secure_agg``.
"""

from __future__ import annotations

import hashlib

from secure_agg.quantize import UpdateSegment as Segment
from wire.files import fsync_dir, write_atomically

__all__ = [
    "DOWNLOAD_CHUNK_BYTES",
    "ENROLL_SIGNATURE_CONTEXT",
    "INSECURE_CLIENT_HEADER",
    "REFUSAL_TRAILER",
    "Segment",
    "enrollment_payload",
    "fsync_dir",
    "write_atomically",
]

DOWNLOAD_CHUNK_BYTES = 1 << 20
"""The coordinator streams a blob in chunks of this many bytes; ``start_chunk`` counts them."""

INSECURE_CLIENT_HEADER = "fedadamw-client-id"
"""With ``--insecure`` (loopback development only), the metadata key naming the caller."""

REFUSAL_TRAILER = "fedadamw-refusal"
"""The trailing-metadata key of every status the coordinator itself ends a call with; its
value is the coordinator's error code (such as ``storage_unavailable``)."""

ENROLL_SIGNATURE_CONTEXT = b"fedadamw-enroll-v1"


def enrollment_payload(token: str, csr_der: bytes) -> bytes:
    """What the identity key signs: ``ENROLL_SIGNATURE_CONTEXT || sha256(token) || csr_der``.

    The token enters hashed (32 bytes) so the payload never carries it in clear; the CSR
    enters whole, which binds the TLS key to the identity key.
    """
    return ENROLL_SIGNATURE_CONTEXT + hashlib.sha256(token.encode("utf-8")).digest() + csr_der

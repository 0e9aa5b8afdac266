"""What an agent presents: its certificate request, its enrollment signature, its certificate.

:func:`checked_csr_key` reads and checks the PKCS#10 request an agent enrolls with (ECDSA
P-256 or P-384, self-signed, at most 16 KiB). :func:`enrollment_payload` is what the agent's
Ed25519 identity key signs over its token and that request, and
:func:`verify_enrollment_signature` checks it. A client certificate names its client by the
SAN URI ``urn:fedadamw:client:<id>`` and the subject CN ``fedadamw-client-<id>``
(:data:`CLIENT_URI_PREFIX`, :data:`CLIENT_CN_PREFIX`; :class:`~coordinator.pki.CertificateAuthority`
issues them); :func:`client_id_from_certificate` and :func:`client_id_from_auth_context` read
the id back from a verified peer. Errors are :class:`~coordinator.errors.CoordinatorError`:
``INVALID_ARGUMENT``, ``TOO_LARGE`` and ``UNAUTHENTICATED``, as :mod:`coordinator.pki` says.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from coordinator.errors import CoordinatorError, ErrorCode
from wire import ENROLL_SIGNATURE_CONTEXT, enrollment_payload

__all__ = [
    "CLIENT_CN_PREFIX",
    "CLIENT_URI_PREFIX",
    "ENROLL_SIGNATURE_CONTEXT",
    "MAX_CLIENT_ID",
    "checked_csr_key",
    "client_id_from_auth_context",
    "client_id_from_certificate",
    "enrollment_payload",
    "verify_enrollment_signature",
]

CLIENT_CN_PREFIX = "fedadamw-client-"
CLIENT_URI_PREFIX = "urn:fedadamw:client:"
MAX_CLIENT_ID = 2**63 - 1
_CLIENT_ID_RE = re.compile(r"[1-9][0-9]{0,18}")
_MAX_CSR_BYTES = 16 * 1024
_CLIENT_CURVES = (ec.SECP256R1, ec.SECP384R1)


def _client_id_from_text(text: str, prefix: str) -> int | None:
    if not text.startswith(prefix):
        return None
    digits = text.removeprefix(prefix)
    return int(digits) if _CLIENT_ID_RE.fullmatch(digits) else None


def _load_certificate(cert: bytes) -> x509.Certificate:
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise CoordinatorError(
            ErrorCode.UNAUTHENTICATED, "the peer certificate cannot be parsed"
        ) from exc


def client_id_from_certificate(cert: bytes) -> int:
    """The client id a client certificate (PEM or DER) names.

    Read from the SAN URI ``urn:fedadamw:client:<id>``, else from the subject CN
    ``fedadamw-client-<id>``. This trusts the certificate: call it only on one the TLS
    handshake verified against the CA. Raises ``UNAUTHENTICATED`` when the certificate
    cannot be parsed, names no client, or names more than one.
    """
    certificate = _load_certificate(cert)
    ids: set[int] = set()
    with contextlib.suppress(x509.ExtensionNotFound):
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
            client_id = _client_id_from_text(uri, CLIENT_URI_PREFIX)
            if client_id is not None:
                ids.add(client_id)
    if not ids:
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attribute.value
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            client_id = _client_id_from_text(text, CLIENT_CN_PREFIX)
            if client_id is not None:
                ids.add(client_id)
    if len(ids) != 1:
        raise CoordinatorError(
            ErrorCode.UNAUTHENTICATED,
            "the peer certificate names no single FedAdamW client"
            if not ids
            else f"the peer certificate names several clients {sorted(ids)}",
        )
    return ids.pop()


def client_id_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> int:
    """The client id of a mutual-TLS peer, from grpc's ``context.auth_context()``.

    Uses the peer's certificate (key ``x509_pem_cert``, str or bytes) through
    :func:`client_id_from_certificate`, else the subject CN (``x509_common_name``). Raises
    ``UNAUTHENTICATED`` when the peer presented no certificate that names a client.
    """
    entries: dict[str, Sequence[bytes]] = {}
    for key, values in auth.items():
        name = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        entries[name] = values
    certificates = entries.get("x509_pem_cert", ())
    if certificates:
        return client_id_from_certificate(certificates[0])
    for value in entries.get("x509_common_name", ()):
        client_id = _client_id_from_text(value.decode("utf-8", "replace"), CLIENT_CN_PREFIX)
        if client_id is not None:
            return client_id
    raise CoordinatorError(
        ErrorCode.UNAUTHENTICATED,
        "the caller presented no client certificate; enroll the agent, then connect with "
        "its certificate",
    )


def verify_enrollment_signature(
    identity_key: bytes, token: str, csr_der: bytes, signature: bytes
) -> None:
    """Check the Ed25519 ``signature`` by the raw 32-byte ``identity_key``.

    Returns only if it verifies over :func:`enrollment_payload`; raises
    ``INVALID_ARGUMENT`` for a malformed key or a signature that does not verify.
    """
    try:
        public_key = Ed25519PublicKey.from_public_bytes(identity_key)
    except ValueError as exc:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"the identity key must be a raw 32-byte Ed25519 public key, got "
            f"{len(identity_key)} bytes",
        ) from exc
    try:
        public_key.verify(signature, enrollment_payload(token, csr_der))
    except InvalidSignature as exc:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            "the enrollment signature does not verify with the identity key over the token "
            "and certificate request",
        ) from exc


def checked_csr_key(csr_der: bytes) -> ec.EllipticCurvePublicKey:
    if len(csr_der) > _MAX_CSR_BYTES:
        raise CoordinatorError(
            ErrorCode.TOO_LARGE,
            f"the certificate request has {len(csr_der)} bytes, more than {_MAX_CSR_BYTES}",
        )
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            "the certificate request is not a DER-encoded PKCS#10 request",
        ) from exc
    try:
        public_key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError) as exc:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            "the certificate request's key or signature cannot be read; make an ECDSA P-256 "
            "request",
        ) from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, _CLIENT_CURVES
    ):
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            "the certificate request's key must be ECDSA on P-256 or P-384 (gRPC's TLS "
            "cannot use Ed25519 or other keys for certificates)",
        )
    if not signature_ok:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            "the certificate request's signature does not verify with its own key",
        )
    return public_key

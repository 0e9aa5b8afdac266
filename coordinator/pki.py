"""The coordinator's certificate authority, client certificates and enrollment signatures.

Layout of the TLS directory (0700), made on first start by
:meth:`CertificateAuthority.load_or_create`::

    ca.key      the CA's ECDSA P-256 private key, PKCS#8 PEM, unencrypted, 0600
    ca.pem      the self-signed CA certificate: CA:true, path length 0, keyCertSign and
                cRLSign, valid ~10 years (3650 days); agents pin it
    server.key  the server's ECDSA P-256 private key, PKCS#8 PEM, unencrypted, 0600
    server.pem  the server certificate, issued by the CA: serverAuth, SANs localhost,
                127.0.0.1, ::1 and every configured server name, valid 365 days

Each later start loads these files and re-issues the server certificate (with a fresh key,
keeping the CA) when it expires within 30 days, when a configured name is missing from its
SANs, or when it no longer matches its key or the CA. Every file is replaced atomically
(temp file created 0600, fsync, rename, directory fsync), so a private key is never
readable by group or others, not even for a moment, and a crash leaves either the old
file or the new one.

Client certificates (:meth:`CertificateAuthority.issue_client_certificate`) certify an
agent's TLS key from its PKCS#10 request. Whatever subject the request asks for, the
certificate names the client by CN ``fedadamw-client-<id>`` and by the SAN URI
``urn:fedadamw:client:<id>``, with EKU clientAuth, valid 365 days by default (never past
the CA). Serial numbers are random 63-bit positive integers, so they fit a signed 64-bit
database column.

Two keys per agent. gRPC's TLS (BoringSSL) does not accept Ed25519 certificate keys: the
handshake fails with NO_COMMON_SIGNATURE_ALGORITHMS. So every TLS key, the CA's, the
server's and the agents', is ECDSA (P-256; agents may use P-384). Separately, each agent
holds an Ed25519 *identity* key that signs its secure-aggregation round keys; the
coordinator stores its raw 32-byte public half. Enrollment binds the two: the request
carries the identity public key, the CSR (self-signed by the TLS key) and an Ed25519
signature by the identity key over :func:`enrollment_payload`
(``b"fedadamw-enroll-v1" || sha256(token) || csr_der``), checked by
:func:`verify_enrollment_signature`.

Errors are :class:`~coordinator.errors.CoordinatorError`: ``INVALID_ARGUMENT`` for a bad
CSR, client id, server name or enrollment signature; ``TOO_LARGE`` for an oversized CSR;
``UNAUTHENTICATED`` when a peer certificate names no client; ``INTERNAL`` for a TLS
directory that cannot be used (a certificate without its key, an expired CA, disk errors).

This module holds the CA itself; the TLS directory's files are read and written by
:mod:`coordinator.pki_files`, the CA and server certificates built by
:mod:`coordinator.pki_issue`, and CSRs, enrollment signatures and the client ids of peer
certificates read by :mod:`coordinator.pki_identity`. Every public name is importable from
here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.pki_files import (
    SERVER_RENEW_BEFORE,
    key_pem,
    load_or_create_ca,
    load_or_issue_server,
)
from coordinator.pki_identity import (
    CLIENT_CN_PREFIX,
    CLIENT_URI_PREFIX,
    ENROLL_SIGNATURE_CONTEXT,
    MAX_CLIENT_ID,
    checked_csr_key,
    client_id_from_auth_context,
    client_id_from_certificate,
    enrollment_payload,
    verify_enrollment_signature,
)
from coordinator.pki_issue import (
    BACKDATE,
    CA_LIFETIME,
    SERVER_LIFETIME,
    key_usage,
    new_serial,
    san_entry,
)

__all__ = [
    "CA_LIFETIME",
    "CLIENT_LIFETIME_DAYS",
    "DEFAULT_SERVER_NAMES",
    "ENROLL_SIGNATURE_CONTEXT",
    "SERVER_LIFETIME",
    "SERVER_RENEW_BEFORE",
    "CertificateAuthority",
    "client_id_from_auth_context",
    "client_id_from_certificate",
    "enrollment_payload",
    "verify_enrollment_signature",
]


CLIENT_LIFETIME_DAYS = 365
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, "now must be timezone-aware (UTC)")
    return now.astimezone(UTC)


class CertificateAuthority:
    """The coordinator's CA with its current server key and certificate.

    Build it with :meth:`load_or_create`; the CA key stays in memory to sign client
    certificates.
    """

    def __init__(
        self,
        *,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_certificate: x509.Certificate,
        server_key: ec.EllipticCurvePrivateKey,
        server_certificate: x509.Certificate,
    ) -> None:
        self._ca_key = ca_key
        self._ca_certificate = ca_certificate
        self._server_key = server_key
        self._server_certificate = server_certificate

    @classmethod
    def load_or_create(
        cls,
        tls_dir: Path,
        *,
        server_names: Sequence[str] = (),
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """Load the CA and server certificate from ``tls_dir``, creating what is missing.

        ``server_names`` are extra DNS names or IP addresses the server certificate must
        carry (besides localhost, 127.0.0.1 and ::1). ``now`` (UTC) defaults to the clock.
        Raises ``INVALID_ARGUMENT`` for a malformed server name and ``INTERNAL`` when the
        directory holds a CA certificate without its key, a key that does not match it, an
        expired CA, or cannot be written.
        """
        moment = _utc_now(now)
        wanted = [san_entry(name) for name in (*DEFAULT_SERVER_NAMES, *server_names)]
        directory = Path(tls_dir)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if directory.stat().st_mode & 0o077:
                directory.chmod(0o700)
            ca_key, ca_certificate = load_or_create_ca(directory, moment)
            server_key, server_certificate = load_or_issue_server(
                directory, ca_key, ca_certificate, wanted, moment
            )
        except OSError as exc:
            raise CoordinatorError(
                ErrorCode.INTERNAL, f"cannot use the TLS directory {directory}: {exc}"
            ) from exc
        return cls(
            ca_key=ca_key,
            ca_certificate=ca_certificate,
            server_key=server_key,
            server_certificate=server_certificate,
        )

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self._ca_certificate

    @property
    def ca_certificate_pem(self) -> bytes:
        return self._ca_certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def server_certificate(self) -> x509.Certificate:
        return self._server_certificate

    @property
    def server_certificate_pem(self) -> bytes:
        return self._server_certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def server_key_pem(self) -> bytes:
        """The server's private key (PKCS#8 PEM) for ``grpc.ssl_server_credentials``."""
        return key_pem(self._server_key)

    def issue_client_certificate(
        self,
        *,
        csr_der: bytes,
        client_id: int,
        now: datetime | None = None,
        days: int = CLIENT_LIFETIME_DAYS,
    ) -> tuple[bytes, int]:
        """Certify the TLS key in ``csr_der`` for ``client_id``; return (PEM, serial).

        The CSR's own signature must verify and its key must be ECDSA P-256 or P-384; its
        subject and extensions are ignored. The certificate is valid from 5 minutes before
        ``now`` for ``days`` days, cut at the CA's expiry. Raises ``INVALID_ARGUMENT`` for a
        malformed or wrongly signed CSR, another key type, a client id outside
        1..2**63-1 or ``days < 1``; ``TOO_LARGE`` for a CSR over 16 KiB.
        """
        moment = _utc_now(now)
        if isinstance(client_id, bool) or not 1 <= client_id <= MAX_CLIENT_ID:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT, f"client id must be in 1..2**63-1, got {client_id}"
            )
        if days < 1:
            raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, f"days must be >= 1, got {days}")
        public_key = checked_csr_key(csr_der)
        not_after = min(moment + timedelta(days=days), self._ca_certificate.not_valid_after_utc)
        serial = new_serial()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [x509.NameAttribute(NameOID.COMMON_NAME, f"{CLIENT_CN_PREFIX}{client_id}")]
                )
            )
            .issuer_name(self._ca_certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(moment - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"{CLIENT_URI_PREFIX}{client_id}")]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM), serial

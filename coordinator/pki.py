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
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.blobs import write_atomically
from coordinator.errors import CoordinatorError, ErrorCode

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

ENROLL_SIGNATURE_CONTEXT = b"fedadamw-enroll-v1"
CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=365)
SERVER_RENEW_BEFORE = timedelta(days=30)
CLIENT_LIFETIME_DAYS = 365
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

_CA_KEY = "ca.key"
_CA_CERT = "ca.pem"
_SERVER_KEY = "server.key"
_SERVER_CERT = "server.pem"
_CA_NAME = "FedAdamW Edge CA"
_ORGANIZATION = "FedAdamW Edge"
_CLIENT_CN_PREFIX = "fedadamw-client-"
_CLIENT_URI_PREFIX = "urn:fedadamw:client:"
_CLIENT_ID_RE = re.compile(r"[1-9][0-9]{0,18}")
_DNS_NAME_RE = re.compile(r"(\*\.)?[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")
_MAX_CLIENT_ID = 2**63 - 1
_MAX_CSR_BYTES = 16 * 1024
# Tolerates agents whose clocks run a little behind the coordinator's.
_BACKDATE = timedelta(minutes=5)
_CLIENT_CURVES = (ec.SECP256R1, ec.SECP384R1)


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, "now must be timezone-aware (UTC)")
    return now.astimezone(UTC)


def _new_serial() -> int:
    return secrets.randbelow(_MAX_CLIENT_ID) + 1


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An ECDSA key from a PEM file, first narrowing the file's mode to 0600 if wider.

    Raises ``INTERNAL`` when the file does not hold an unencrypted ECDSA key.
    """
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CoordinatorError(ErrorCode.INTERNAL, f"{path} holds no readable private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CoordinatorError(ErrorCode.INTERNAL, f"{path} does not hold an ECDSA private key")
    return key


def _load_certificate_file(path: Path) -> x509.Certificate:
    """A PEM certificate from a file; ``INTERNAL`` when it holds none."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise CoordinatorError(ErrorCode.INTERNAL, f"{path} holds no readable certificate") from exc


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def _san_entry(name: str) -> x509.GeneralName:
    """An IP address SAN for an address literal, a DNS SAN (lowercased) otherwise."""
    text = name.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if len(text) > 253 or _DNS_NAME_RE.fullmatch(text) is None:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"invalid server name {name!r}: give a DNS name (punycode for non-ASCII) or an "
            "IP address, e.g. 'coordinator.example.org' or '10.0.0.5'",
        )
    return x509.DNSName(text.lower())


def _client_id_from_text(text: str, prefix: str) -> int | None:
    if not text.startswith(prefix):
        return None
    digits = text.removeprefix(prefix)
    return int(digits) if _CLIENT_ID_RE.fullmatch(digits) else None


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
        wanted = [_san_entry(name) for name in (*DEFAULT_SERVER_NAMES, *server_names)]
        directory = Path(tls_dir)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if directory.stat().st_mode & 0o077:
                directory.chmod(0o700)
            ca_key, ca_certificate = cls._load_or_create_ca(directory, moment)
            server_key, server_certificate = cls._load_or_issue_server(
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

    @staticmethod
    def _load_or_create_ca(
        directory: Path, now: datetime
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path, cert_path = directory / _CA_KEY, directory / _CA_CERT
        if key_path.exists():
            key = _load_private_key(key_path)
        elif cert_path.exists():
            raise CoordinatorError(
                ErrorCode.INTERNAL,
                f"{cert_path} exists but {key_path} does not: restore the CA key from a "
                f"backup, or remove {directory} to start a new CA (every agent must then "
                "enroll again)",
            )
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_atomically(key_path, _key_pem(key), mode=0o600)
        if cert_path.exists():
            certificate = _load_certificate_file(cert_path)
            if not _same_key(certificate, key):
                raise CoordinatorError(
                    ErrorCode.INTERNAL,
                    f"{cert_path} does not belong to {key_path}: restore the pair from a backup",
                )
        else:
            # Only ever reached on first start (or when that start crashed between the
            # two writes), so no agent can trust an earlier CA certificate.
            certificate = _self_signed_ca(key, now)
            write_atomically(
                cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644
            )
        if certificate.not_valid_after_utc <= now:
            raise CoordinatorError(
                ErrorCode.INTERNAL,
                f"the CA certificate {cert_path} expired on "
                f"{certificate.not_valid_after_utc:%Y-%m-%d}: remove {directory} to start a "
                "new CA, then enroll every agent again",
            )
        return key, certificate

    @staticmethod
    def _load_or_issue_server(
        directory: Path,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_certificate: x509.Certificate,
        wanted: Sequence[x509.GeneralName],
        now: datetime,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path, cert_path = directory / _SERVER_KEY, directory / _SERVER_CERT
        if key_path.exists() and cert_path.exists():
            # An unreadable server key or certificate is simply issued again.
            with contextlib.suppress(CoordinatorError):
                key = _load_private_key(key_path)
                certificate = _load_certificate_file(cert_path)
                if _server_certificate_fits(certificate, key, ca_certificate, wanted, now):
                    return key, certificate
        key = ec.generate_private_key(ec.SECP256R1())
        # Keep every name the old certificate had, so a restart with fewer names never
        # breaks agents that connect by one of them.
        names = list(dict.fromkeys(wanted))
        if cert_path.exists():
            with contextlib.suppress(CoordinatorError, x509.ExtensionNotFound):
                old = _load_certificate_file(cert_path)
                san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                names.extend(entry for entry in san.value if entry not in names)
        certificate = _issue_server_certificate(ca_key, ca_certificate, key, names, now)
        write_atomically(key_path, _key_pem(key), mode=0o600)
        write_atomically(
            cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644
        )
        return key, certificate

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
        return _key_pem(self._server_key)

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
        if isinstance(client_id, bool) or not 1 <= client_id <= _MAX_CLIENT_ID:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT, f"client id must be in 1..2**63-1, got {client_id}"
            )
        if days < 1:
            raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, f"days must be >= 1, got {days}")
        public_key = _checked_csr_key(csr_der)
        not_after = min(moment + timedelta(days=days), self._ca_certificate.not_valid_after_utc)
        serial = _new_serial()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [x509.NameAttribute(NameOID.COMMON_NAME, f"{_CLIENT_CN_PREFIX}{client_id}")]
                )
            )
            .issuer_name(self._ca_certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(moment - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"{_CLIENT_URI_PREFIX}{client_id}")]
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


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _self_signed_ca(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_new_serial())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    names: Sequence[x509.GeneralName],
    now: datetime,
) -> x509.Certificate:
    first_dns = next((n.value for n in names if isinstance(n, x509.DNSName)), "localhost")
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, first_dns),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(_new_serial())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + SERVER_LIFETIME, ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _server_certificate_fits(
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    wanted: Sequence[x509.GeneralName],
    now: datetime,
) -> bool:
    """Whether the stored server certificate can stay: matching, current and named right."""
    if not _same_key(certificate, key):
        return False
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if certificate.not_valid_before_utc > now:
        return False
    if certificate.not_valid_after_utc - now < SERVER_RENEW_BEFORE:
        return False
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    present = set(san.value)
    return all(name in present for name in wanted)


def _checked_csr_key(csr_der: bytes) -> ec.EllipticCurvePublicKey:
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
            client_id = _client_id_from_text(uri, _CLIENT_URI_PREFIX)
            if client_id is not None:
                ids.add(client_id)
    if not ids:
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attribute.value
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            client_id = _client_id_from_text(text, _CLIENT_CN_PREFIX)
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
        client_id = _client_id_from_text(value.decode("utf-8", "replace"), _CLIENT_CN_PREFIX)
        if client_id is not None:
            return client_id
    raise CoordinatorError(
        ErrorCode.UNAUTHENTICATED,
        "the caller presented no client certificate; enroll the agent, then connect with "
        "its certificate",
    )


def enrollment_payload(token: str, csr_der: bytes) -> bytes:
    """What the identity key signs: ``ENROLL_SIGNATURE_CONTEXT || sha256(token) || csr_der``.

    The token enters hashed (32 bytes) so the payload never carries it in clear; the CSR
    enters whole, which binds the TLS key to the identity key.
    """
    return ENROLL_SIGNATURE_CONTEXT + hashlib.sha256(token.encode("utf-8")).digest() + csr_der


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

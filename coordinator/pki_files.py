"""The TLS directory's files: loading the CA and server keys and certificates, or making them.

:func:`load_or_create_ca` loads ``ca.key`` and ``ca.pem``, creating both on first start, and
refuses a certificate without its key, a pair that does not match, or an expired CA.
:func:`load_or_issue_server` keeps ``server.key`` and ``server.pem`` while they match each
other and the CA, carry every wanted name and are valid for more than
:data:`SERVER_RENEW_BEFORE`; otherwise it issues a fresh key and certificate, keeping the
old certificate's names. Keys are PKCS#8 PEM (:func:`key_pem`), narrowed to 0600 when read;
every file is written with :func:`~wire.files.write_atomically`. The layout of the
directory: :mod:`coordinator.pki`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.pki_issue import issue_server_certificate, self_signed_ca
from wire.files import write_atomically

__all__ = [
    "SERVER_RENEW_BEFORE",
    "key_pem",
    "load_or_create_ca",
    "load_or_issue_server",
]

SERVER_RENEW_BEFORE = timedelta(days=30)

_CA_KEY = "ca.key"
_CA_CERT = "ca.pem"
_SERVER_KEY = "server.key"
_SERVER_CERT = "server.pem"


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
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
    """Whether ``cert`` certifies the public half of ``key``."""
    return cert.public_key() == key.public_key()


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


def load_or_create_ca(
    directory: Path, now: datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA key and certificate of ``directory``, made on first start (module docstring)."""
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
        write_atomically(key_path, key_pem(key), mode=0o600)
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
        certificate = self_signed_ca(key, now)
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


def load_or_issue_server(
    directory: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    wanted: Sequence[x509.GeneralName],
    now: datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The stored server key and certificate if they can stay, else freshly issued ones."""
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
    certificate = issue_server_certificate(ca_key, ca_certificate, key, names, now)
    write_atomically(key_path, key_pem(key), mode=0o600)
    write_atomically(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return key, certificate

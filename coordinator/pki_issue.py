"""Building the CA's and the server's certificates, and the names a server certificate carries.

:func:`self_signed_ca` makes the CA certificate (CA:true, path length 0, keyCertSign and
cRLSign, :data:`CA_LIFETIME`); :func:`issue_server_certificate` the server certificate the
CA signs (serverAuth, the given SANs, :data:`SERVER_LIFETIME`, never past the CA).
:func:`san_entry` turns a configured server name into its SAN, :func:`key_usage` is the
KeyUsage extension of every certificate here and of the client certificates
(:meth:`~coordinator.pki.CertificateAuthority.issue_client_certificate`), and
:func:`new_serial` draws the random 63-bit serials all of them carry. Every certificate is
backdated by :data:`BACKDATE`.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.pki_identity import MAX_CLIENT_ID

__all__ = [
    "BACKDATE",
    "CA_LIFETIME",
    "SERVER_LIFETIME",
    "issue_server_certificate",
    "key_usage",
    "new_serial",
    "san_entry",
    "self_signed_ca",
]

CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=365)
_CA_NAME = "FedAdamW Edge CA"
_ORGANIZATION = "FedAdamW Edge"
_DNS_NAME_RE = re.compile(r"(\*\.)?[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")
# Tolerates agents whose clocks run a little behind the coordinator's.
BACKDATE = timedelta(minutes=5)


def new_serial() -> int:
    return secrets.randbelow(MAX_CLIENT_ID) + 1


def san_entry(name: str) -> x509.GeneralName:
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


def key_usage(
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


def self_signed_ca(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
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
        .serial_number(new_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue_server_certificate(
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
        .serial_number(new_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_LIFETIME, ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

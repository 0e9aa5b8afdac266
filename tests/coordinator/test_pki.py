"""The CA, server and client certificates, enrollment signatures, and mutual TLS over gRPC."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.pki import (
    ENROLL_SIGNATURE_CONTEXT,
    CertificateAuthority,
    client_id_from_auth_context,
    client_id_from_certificate,
    enrollment_payload,
    verify_enrollment_signature,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
DEFAULT_SANS = {
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(certificate: x509.Certificate) -> set[x509.GeneralName]:
    ext = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(ext.value)


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    subject: str = "agent-asks-for-this",
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "tls", now=T0)


# --- the CA and the server certificate ---------------------------------------------------


def test_first_start_creates_files_with_private_permissions(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        ca = CertificateAuthority.load_or_create(tls, now=T0)
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tls.iterdir()) == ["ca.key", "ca.pem", "server.key", "server.pem"]
    assert _mode(tls) == 0o700
    assert _mode(tls / "ca.key") == 0o600
    assert _mode(tls / "server.key") == 0o600
    assert not _mode(tls / "ca.pem") & 0o022
    assert (tls / "ca.pem").read_bytes() == ca.ca_certificate_pem
    assert (tls / "server.pem").read_bytes() == ca.server_certificate_pem
    assert (tls / "server.key").read_bytes() == ca.server_key_pem
    assert b"BEGIN PRIVATE KEY" in (tls / "ca.key").read_bytes()  # PKCS#8


def test_existing_directory_is_tightened_to_0700(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir(mode=0o755)
    tls.chmod(0o755)
    CertificateAuthority.load_or_create(tls, now=T0)
    assert _mode(tls) == 0o700


def test_ca_certificate_is_a_ten_year_ca_with_path_length_zero(ca: CertificateAuthority) -> None:
    cert = ca.ca_certificate
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.not_valid_after_utc - T0 == timedelta(days=3650)
    assert cert.not_valid_before_utc <= T0


def test_server_certificate_names_and_usage(ca: CertificateAuthority) -> None:
    cert = ca.server_certificate
    assert _sans(cert) == DEFAULT_SANS
    assert cert.issuer == ca.ca_certificate.subject
    cert.verify_directly_issued_by(ca.ca_certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - T0 == timedelta(days=365)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    for host in ("localhost", "127.0.0.1", "::1"):
        server_name: x509.GeneralName
        try:
            server_name = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            server_name = x509.DNSName(host)
        verifier = (
            PolicyBuilder()
            .store(Store([ca.ca_certificate]))
            .time(T0 + timedelta(days=1))
            .build_server_verifier(server_name)
        )
        verifier.verify(cert, [])


def test_custom_server_names_dns_and_ip(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(
        tmp_path / "tls",
        server_names=["Coord.Example.ORG", "10.1.2.3", "2001:db8::1", "[2001:db8::2]"],
        now=T0,
    )
    assert _sans(ca.server_certificate) == DEFAULT_SANS | {
        x509.DNSName("coord.example.org"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::2")),
    }
    cn = ca.server_certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "localhost"


@pytest.mark.parametrize(
    "name", ["", "has space", "a/b", "user@host", "hôte.example", "[name]", "a..b", "host:443"]
)
def test_malformed_server_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CoordinatorError) as info:
        CertificateAuthority.load_or_create(tmp_path / "tls", server_names=[name], now=T0)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_reload_keeps_the_ca_and_the_server_certificate(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    first = CertificateAuthority.load_or_create(tls, now=T0)
    ca_key = (tls / "ca.key").read_bytes()
    second = CertificateAuthority.load_or_create(tls, now=T0 + timedelta(days=100))
    assert second.ca_certificate_pem == first.ca_certificate_pem
    assert second.server_certificate_pem == first.server_certificate_pem
    assert second.server_key_pem == first.server_key_pem
    assert (tls / "ca.key").read_bytes() == ca_key
    # The reloaded CA key still signs certificates that chain to the original CA.
    pem, _ = second.issue_client_certificate(
        csr_der=_csr(ec.generate_private_key(ec.SECP256R1())), client_id=3, now=T0
    )
    x509.load_pem_x509_certificate(pem).verify_directly_issued_by(first.ca_certificate)


def test_server_certificate_is_reissued_near_expiry(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    first = CertificateAuthority.load_or_create(tls, now=T0)
    later = T0 + timedelta(days=340)  # 25 days before the server certificate expires
    second = CertificateAuthority.load_or_create(tls, now=later)
    assert second.ca_certificate_pem == first.ca_certificate_pem
    assert second.server_certificate_pem != first.server_certificate_pem
    assert second.server_certificate.not_valid_after_utc - later == timedelta(days=365)
    assert second.server_certificate.serial_number != first.server_certificate.serial_number
    second.server_certificate.verify_directly_issued_by(first.ca_certificate)
    assert (tls / "server.pem").read_bytes() == second.server_certificate_pem
    assert (tls / "server.key").read_bytes() == second.server_key_pem
    assert _mode(tls / "server.key") == 0o600
    assert sorted(p.name for p in tls.iterdir()) == ["ca.key", "ca.pem", "server.key", "server.pem"]
    third = CertificateAuthority.load_or_create(tls, now=later + timedelta(days=1))
    assert third.server_certificate_pem == second.server_certificate_pem


def test_server_certificate_is_reissued_for_a_new_name_and_keeps_old_ones(
    tmp_path: Path,
) -> None:
    tls = tmp_path / "tls"
    first = CertificateAuthority.load_or_create(tls, server_names=["a.example"], now=T0)
    same = CertificateAuthority.load_or_create(tls, server_names=["A.example"], now=T0)
    assert same.server_certificate_pem == first.server_certificate_pem
    fewer = CertificateAuthority.load_or_create(tls, now=T0)
    assert fewer.server_certificate_pem == first.server_certificate_pem
    more = CertificateAuthority.load_or_create(tls, server_names=["192.168.7.1"], now=T0)
    assert more.server_certificate_pem != first.server_certificate_pem
    assert more.ca_certificate_pem == first.ca_certificate_pem
    assert _sans(more.server_certificate) == DEFAULT_SANS | {
        x509.DNSName("a.example"),
        x509.IPAddress(ipaddress.ip_address("192.168.7.1")),
    }


def test_server_certificate_is_reissued_when_its_key_is_lost(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    first = CertificateAuthority.load_or_create(tls, now=T0)
    (tls / "server.key").write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    second = CertificateAuthority.load_or_create(tls, now=T0)
    assert second.server_certificate_pem != first.server_certificate_pem
    assert (
        second.server_certificate.public_key()
        == serialization.load_pem_private_key(second.server_key_pem, None).public_key()
    )


def test_interrupted_first_start_completes(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    first = CertificateAuthority.load_or_create(tls, now=T0)
    (tls / "ca.pem").unlink()  # as if the first start died after writing ca.key
    (tls / "server.pem").unlink()
    second = CertificateAuthority.load_or_create(tls, now=T0)
    assert second.ca_certificate.public_key() == first.ca_certificate.public_key()
    second.server_certificate.verify_directly_issued_by(second.ca_certificate)


def test_unreadable_server_files_are_replaced(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    first = CertificateAuthority.load_or_create(tls, now=T0)
    (tls / "server.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    second = CertificateAuthority.load_or_create(tls, now=T0)
    second.server_certificate.verify_directly_issued_by(first.ca_certificate)
    (tls / "server.key").write_bytes(b"garbage")
    third = CertificateAuthority.load_or_create(tls, now=T0)
    assert third.server_certificate_pem != second.server_certificate_pem
    assert (tls / "server.key").read_bytes() == third.server_key_pem


def test_unreadable_ca_files_are_refused(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    CertificateAuthority.load_or_create(tls, now=T0)
    ca_pem = (tls / "ca.pem").read_bytes()
    (tls / "ca.pem").write_bytes(b"garbage")
    with pytest.raises(CoordinatorError) as info:
        CertificateAuthority.load_or_create(tls, now=T0)
    assert info.value.code is ErrorCode.INTERNAL
    (tls / "ca.pem").write_bytes(ca_pem)
    (tls / "ca.key").write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CoordinatorError) as info:
        CertificateAuthority.load_or_create(tls, now=T0)
    assert info.value.code is ErrorCode.INTERNAL
    assert "does not belong" in str(info.value)


def test_loose_key_permissions_are_narrowed_on_load(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    CertificateAuthority.load_or_create(tls, now=T0)
    (tls / "ca.key").chmod(0o644)
    CertificateAuthority.load_or_create(tls, now=T0)
    assert _mode(tls / "ca.key") == 0o600


def test_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CoordinatorError) as info:
        CertificateAuthority.load_or_create(tmp_path / "tls", now=datetime(2030, 1, 1))
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_ca_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    CertificateAuthority.load_or_create(tls, now=T0)
    (tls / "ca.key").unlink()
    with pytest.raises(CoordinatorError) as info:
        CertificateAuthority.load_or_create(tls, now=T0)
    assert info.value.code is ErrorCode.INTERNAL
    assert "ca.key" in str(info.value)


def test_expired_ca_is_refused(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    CertificateAuthority.load_or_create(tls, now=T0)
    with pytest.raises(CoordinatorError) as info:
        CertificateAuthority.load_or_create(tls, now=T0 + timedelta(days=3651))
    assert info.value.code is ErrorCode.INTERNAL


# --- client certificates -----------------------------------------------------------------


def test_issue_client_certificate(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem, serial = ca.issue_client_certificate(csr_der=_csr(key), client_id=42, now=T0)
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject == x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "fedadamw-client-42")]
    )
    assert cert.issuer == ca.ca_certificate.subject
    assert cert.serial_number == serial
    assert 0 < serial < 2**63
    assert cert.public_key() == key.public_key()
    assert _sans(cert) == {x509.UniformResourceIdentifier("urn:fedadamw:client:42")}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_before_utc <= T0
    assert cert.not_valid_after_utc == T0 + timedelta(days=365)
    cert.verify_directly_issued_by(ca.ca_certificate)
    verifier = (
        PolicyBuilder()
        .store(Store([ca.ca_certificate]))
        .time(T0 + timedelta(days=30))
        .build_client_verifier()
    )
    verified = verifier.verify(cert, [])
    assert verified.chain == [cert, ca.ca_certificate]
    assert client_id_from_certificate(pem) == 42


def test_client_certificates_get_distinct_serials_and_custom_lifetime(
    ca: CertificateAuthority,
) -> None:
    csr = _csr(ec.generate_private_key(ec.SECP384R1()))  # P-384 is accepted too
    serials = {ca.issue_client_certificate(csr_der=csr, client_id=1, now=T0)[1] for _ in range(5)}
    assert len(serials) == 5
    pem, _ = ca.issue_client_certificate(csr_der=csr, client_id=1, now=T0, days=7)
    assert x509.load_pem_x509_certificate(pem).not_valid_after_utc == T0 + timedelta(days=7)
    capped, _ = ca.issue_client_certificate(csr_der=csr, client_id=1, now=T0, days=100_000)
    assert x509.load_pem_x509_certificate(capped).not_valid_after_utc == (
        ca.ca_certificate.not_valid_after_utc
    )


def _tampered_csr() -> bytes:
    der = _csr(ec.generate_private_key(ec.SECP256R1()), subject="agent-abcdef")
    return der.replace(b"agent-abcdef", b"agent-abcdeg")


@pytest.mark.parametrize(
    ("make_csr", "fragment"),
    [
        (_tampered_csr, "signature"),
        (lambda: _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "ECDSA"),
        (lambda: _csr(ed25519.Ed25519PrivateKey.generate()), "ECDSA"),
        (lambda: _csr(ec.generate_private_key(ec.SECP521R1())), "P-256"),
        (lambda: b"\x30\x03garbage", "PKCS#10"),
        (lambda: b"", "PKCS#10"),
    ],
)
def test_bad_csrs_are_refused(
    ca: CertificateAuthority, make_csr: Callable[[], bytes], fragment: str
) -> None:
    with pytest.raises(CoordinatorError) as info:
        ca.issue_client_certificate(csr_der=make_csr(), client_id=1, now=T0)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert fragment in str(info.value)


def test_oversized_csr_and_bad_arguments_are_refused(ca: CertificateAuthority) -> None:
    csr = _csr(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CoordinatorError) as info:
        ca.issue_client_certificate(csr_der=csr + b"\x00" * 20_000, client_id=1)
    assert info.value.code is ErrorCode.TOO_LARGE
    for kwargs in ({"client_id": 0}, {"client_id": -3}, {"client_id": 2**63}, {"days": 0}):
        with pytest.raises(CoordinatorError) as info:
            ca.issue_client_certificate(csr_der=csr, **{"client_id": 1, **kwargs})  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


def _self_signed(
    subject: str, sans: list[x509.GeneralName] | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(key, hashes.SHA256())


def test_client_id_from_certificate_der_and_cn_fallback(ca: CertificateAuthority) -> None:
    pem, _ = ca.issue_client_certificate(
        csr_der=_csr(ec.generate_private_key(ec.SECP256R1())), client_id=9, now=T0
    )
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert client_id_from_certificate(der) == 9
    _, cn_only = _self_signed("fedadamw-client-17")
    assert client_id_from_certificate(cn_only.public_bytes(serialization.Encoding.PEM)) == 17


@pytest.mark.parametrize(
    ("subject", "sans"),
    [
        ("web.example.org", [x509.DNSName("web.example.org")]),
        ("fedadamw-client-", None),
        ("fedadamw-client-007", None),
        ("fedadamw-client-12x", None),
        ("x", [x509.UniformResourceIdentifier("urn:fedadamw:client:abc")]),
        (
            "x",
            [
                x509.UniformResourceIdentifier("urn:fedadamw:client:1"),
                x509.UniformResourceIdentifier("urn:fedadamw:client:2"),
            ],
        ),
    ],
)
def test_client_id_from_certificate_refuses_foreign_certificates(
    subject: str, sans: list[x509.GeneralName] | None
) -> None:
    _, cert = _self_signed(subject, sans)
    with pytest.raises(CoordinatorError) as info:
        client_id_from_certificate(cert.public_bytes(serialization.Encoding.PEM))
    assert info.value.code is ErrorCode.UNAUTHENTICATED


def test_client_id_from_certificate_refuses_garbage() -> None:
    for blob in (b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n"):
        with pytest.raises(CoordinatorError) as info:
            client_id_from_certificate(blob)
        assert info.value.code is ErrorCode.UNAUTHENTICATED


def test_client_id_from_auth_context_forms(ca: CertificateAuthority) -> None:
    pem, _ = ca.issue_client_certificate(
        csr_der=_csr(ec.generate_private_key(ec.SECP256R1())), client_id=5, now=T0
    )
    assert client_id_from_auth_context({"x509_pem_cert": [pem]}) == 5
    assert client_id_from_auth_context({b"x509_pem_cert": [pem]}) == 5  # type: ignore[dict-item]
    assert client_id_from_auth_context({"x509_common_name": [b"fedadamw-client-8"]}) == 8
    for auth in (
        {},
        {"transport_security_type": [b"ssl"]},
        {"x509_common_name": [b"someone-else"]},
    ):
        with pytest.raises(CoordinatorError) as info:
            client_id_from_auth_context(auth)
        assert info.value.code is ErrorCode.UNAUTHENTICATED


# --- enrollment signatures -----------------------------------------------------------------


def _identity() -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, raw


def test_enrollment_payload_layout() -> None:
    payload = enrollment_payload("fedadamw_tok", b"CSR")
    assert ENROLL_SIGNATURE_CONTEXT == b"fedadamw-enroll-v1"
    assert payload.startswith(b"fedadamw-enroll-v1")
    digest = payload[len(ENROLL_SIGNATURE_CONTEXT) : len(ENROLL_SIGNATURE_CONTEXT) + 32]
    assert digest == hashlib.sha256(b"fedadamw_tok").digest()
    assert payload.endswith(b"CSR")
    assert len(payload) == len(ENROLL_SIGNATURE_CONTEXT) + 32 + 3


def test_enrollment_signature_verifies() -> None:
    key, public = _identity()
    csr = _csr(ec.generate_private_key(ec.SECP256R1()))
    signature = key.sign(enrollment_payload("fedadamw_token", csr))
    verify_enrollment_signature(public, "fedadamw_token", csr, signature)


def test_enrollment_signature_refusals() -> None:
    key, public = _identity()
    _, other_public = _identity()
    csr = _csr(ec.generate_private_key(ec.SECP256R1()))
    other_csr = _csr(ec.generate_private_key(ec.SECP256R1()))
    signature = key.sign(enrollment_payload("fedadamw_token", csr))
    cases = [
        (public, "fedadamw_tokem", csr, signature),  # tampered token
        (public, "fedadamw_token", other_csr, signature),  # tampered CSR
        (other_public, "fedadamw_token", csr, signature),  # wrong key
        (public, "fedadamw_token", csr, signature[:-1]),  # truncated signature
        (public[:31], "fedadamw_token", csr, signature),  # malformed key
        (public + b"\x00", "fedadamw_token", csr, signature),  # malformed key
    ]
    for identity, token, request, sig in cases:
        with pytest.raises(CoordinatorError) as info:
            verify_enrollment_signature(identity, token, request, sig)
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


# --- mutual TLS over real gRPC --------------------------------------------------------------


class _RecordingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.client_ids: list[int] = []

    async def Check(  # noqa: N802 (the gRPC method name)
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> health_pb2.HealthCheckResponse:
        self.client_ids.append(client_id_from_auth_context(context.auth_context()))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _client_credentials(
    authority: CertificateAuthority, trusted_ca_pem: bytes, client_id: int
) -> grpc.ChannelCredentials:
    key = ec.generate_private_key(ec.SECP256R1())
    pem, _ = authority.issue_client_certificate(csr_der=_csr(key), client_id=client_id)
    return grpc.ssl_channel_credentials(
        root_certificates=trusted_ca_pem, private_key=_key_pem(key), certificate_chain=pem
    )


async def _check(target: str, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(target, credentials) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        return int(response.status)


def test_mutual_tls_end_to_end(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "tls")
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue")

    async def scenario() -> tuple[list[int], int, grpc.StatusCode | None]:
        servicer = _RecordingHealth()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server_credentials = grpc.ssl_server_credentials(
            [(ca.server_key_pem, ca.server_certificate_pem)],
            root_certificates=ca.ca_certificate_pem,
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", server_credentials)
        await server.start()
        try:
            target = f"127.0.0.1:{port}"
            status = await _check(target, _client_credentials(ca, ca.ca_certificate_pem, 314))
            refused: grpc.StatusCode | None = None
            try:
                await _check(target, _client_credentials(rogue, ca.ca_certificate_pem, 315))
            except grpc.aio.AioRpcError as exc:
                refused = exc.code()
        finally:
            await server.stop(None)
        return servicer.client_ids, status, refused

    client_ids, status, refused = asyncio.run(scenario())
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert client_ids == [314]
    assert refused is grpc.StatusCode.UNAVAILABLE

"""Enrollment: make the agent's keys on the device and trade a token for a certificate.

Two keys are made here and never leave the device:

- an Ed25519 *identity* key, which signs the agent's secure-aggregation round keys (the
  coordinator stores its public half and checks every round's signatures against it);
- an ECDSA P-256 *TLS* key, for mutual TLS (gRPC's TLS does not take Ed25519 certificates).

The agent sends the identity public key, a certificate request for the TLS key, and an
Ed25519 signature over ``"fedadamw-enroll-v1" || sha256(token) || csr`` that binds the two.
The coordinator answers with the client id, the client certificate and its CA certificate.
Enrollment runs on the coordinator's enrollment port, over server-authenticated TLS: the
agent pins the CA certificate the operator gave it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edge_client.retry import CHANNEL_OPTIONS
from wire import enrollment_payload
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

__all__ = [
    "AGENT_CHANNEL_OPTIONS",
    "Credentials",
    "enroll",
    "enroll_insecure",
    "mutual_tls_channel",
]

AGENT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    *CHANNEL_OPTIONS,  # reconnect within seconds of a coordinator's restart
)
"""The options of the agent's long-lived channel to the coordinator's agent port."""


@dataclass(frozen=True)
class Credentials:
    """What an enrolled agent holds: its id, both private keys and the certificates."""

    client_id: int
    identity_key: Ed25519PrivateKey
    tls_key_pem: bytes
    certificate_pem: bytes
    ca_certificate_pem: bytes


def _csr(tls_key: ec.EllipticCurvePrivateKey, label: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label or "fedadamw-agent")])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(tls_key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


async def enroll(
    *,
    address: str,
    ca_certificate_pem: bytes,
    token: str,
    label: str = "",
    timeout: float = 30.0,
) -> Credentials:
    """Enroll at the coordinator's enrollment ``address`` (HOST:PORT).

    Raises ``grpc.aio.AioRpcError`` as the coordinator answered (PERMISSION_DENIED for a
    bad, expired or used token; UNAVAILABLE when it cannot be reached).
    """
    identity = Ed25519PrivateKey.generate()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(tls_key, label[:64])
    request = pb.EnrollRequest(
        token=token,
        identity_key=identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        csr_der=csr,
        signature=identity.sign(enrollment_payload(token, csr)),
        label=label,
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_certificate_pem)
    async with grpc.aio.secure_channel(address, credentials) as channel:
        response = await pb_grpc.EdgeServiceStub(channel).Enroll(request, timeout=timeout)
    return Credentials(
        client_id=response.client_id,
        identity_key=identity,
        tls_key_pem=tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate_pem=bytes(response.certificate_pem),
        ca_certificate_pem=bytes(response.ca_certificate_pem) or ca_certificate_pem,
    )


async def enroll_insecure(
    *, address: str, token: str, label: str = "", timeout: float = 30.0
) -> Credentials:
    """Enroll with a coordinator that runs ``--insecure`` (no TLS; loopback development).

    The agent still makes its identity key; there is no certificate, and the coordinator
    takes the client id from request metadata, which nothing authenticates.
    """
    identity = Ed25519PrivateKey.generate()
    request = pb.EnrollRequest(
        token=token,
        identity_key=identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        csr_der=b"",
        signature=identity.sign(enrollment_payload(token, b"")),
        label=label,
    )
    async with grpc.aio.insecure_channel(address) as channel:
        response = await pb_grpc.EdgeServiceStub(channel).Enroll(request, timeout=timeout)
    return Credentials(
        client_id=response.client_id,
        identity_key=identity,
        tls_key_pem=b"",
        certificate_pem=b"",
        ca_certificate_pem=b"",
    )


def mutual_tls_channel(address: str, credentials: Credentials) -> grpc.aio.Channel:
    """A channel to the coordinator's agent port, authenticated both ways."""
    tls = grpc.ssl_channel_credentials(
        root_certificates=credentials.ca_certificate_pem,
        private_key=credentials.tls_key_pem,
        certificate_chain=credentials.certificate_pem,
    )
    return grpc.aio.secure_channel(address, tls, options=AGENT_CHANNEL_OPTIONS)

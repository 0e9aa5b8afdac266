"""The agent's state directory, without a coordinator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from edge_client.enrollment import Credentials
from edge_client.errors import EdgeError, ErrorCode
from edge_client.state import AgentInfo, LastRound, StateDir


def _certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _credentials(client_id: int = 7) -> Credentials:
    tls = ec.generate_private_key(ec.SECP256R1())
    return Credentials(
        client_id=client_id,
        identity_key=Ed25519PrivateKey.generate(),
        tls_key_pem=tls.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate_pem=_certificate(tls),
        ca_certificate_pem=_certificate(ec.generate_private_key(ec.SECP256R1())),
    )


def _saved(tmp_path: Path) -> tuple[StateDir, Credentials]:
    state = StateDir(tmp_path / "agent")
    credentials = _credentials()
    state.save_enrollment(credentials, AgentInfo(client_id=7, coordinator="h:1", enrolled_at="now"))
    return state, credentials


def test_round_trip_and_modes(tmp_path: Path) -> None:
    state, credentials = _saved(tmp_path)
    loaded = state.credentials()
    assert loaded.client_id == 7
    assert loaded.certificate_pem == credentials.certificate_pem
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert loaded.identity_key.public_key().public_bytes(
        *raw
    ) == credentials.identity_key.public_key().public_bytes(*raw)
    assert (state.path.stat().st_mode & 0o777) == 0o700
    for key in ("identity.key", "tls.key"):
        assert ((state.path / key).stat().st_mode & 0o777) == 0o600
    assert not list(state.path.glob(".*"))  # no temporary files left
    assert state.last_round() is None
    state.save_last_round(LastRound("r", "committed", 3, "", "t"))
    assert state.describe()["last_round"]["model_version"] == 3


def test_a_second_enrollment_is_refused(tmp_path: Path) -> None:
    state, _ = _saved(tmp_path)
    with pytest.raises(EdgeError) as info:
        state.save_enrollment(
            _credentials(8), AgentInfo(client_id=8, coordinator="h:1", enrolled_at="now")
        )
    assert info.value.code is ErrorCode.ALREADY_ENROLLED
    assert "client 7" in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("identity.key", b"garbage", "identity.key is damaged"),
        ("tls.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "damaged"),
        ("client.pem", None, "client.pem is missing"),
        ("agent.json", b"{not json", "agent.json is damaged"),
    ],
)
def test_damage_is_named(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    state, _ = _saved(tmp_path)
    path = state.path / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    with pytest.raises(EdgeError, match=message):
        state.credentials()


def test_a_certificate_for_another_key_is_refused(tmp_path: Path) -> None:
    state, _ = _saved(tmp_path)
    other = _certificate(ec.generate_private_key(ec.SECP256R1()))
    (state.path / "client.pem").write_bytes(other)
    with pytest.raises(EdgeError, match="does not match"):
        state.credentials()

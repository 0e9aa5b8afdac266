"""The agent's state directory: its keys, certificates, settings and last round.

    DIR/                mode 0700
      identity.key      Ed25519 identity key, PKCS#8 PEM, mode 0600 (signs round keys)
      tls.key           ECDSA P-256 TLS key, PKCS#8 PEM, mode 0600
      client.pem        the client certificate the coordinator's CA issued
      ca.pem            the coordinator's CA certificate (pinned)
      agent.json        client id, coordinator address, enrollment time, label
      last_round.json   the last round taken part in and how it ended
      cache/            the last assigned round's blobs, by sha256 (resumable); after each
                        round every other file goes (``edge_client.transfers.prune_cache``)

Private keys are written with mode 0600 before any byte of them, and never leave the device.
Every file is written atomically (temporary file, fsync, rename). A missing or damaged file
gives an ``EdgeError`` that names it and says what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.enrollment import Credentials
from edge_client.errors import EdgeError, ErrorCode
from wire.files import write_atomically

__all__ = ["AgentInfo", "LastRound", "StateDir"]

IDENTITY_KEY = "identity.key"
TLS_KEY = "tls.key"
CERTIFICATE = "client.pem"
CA_CERTIFICATE = "ca.pem"
AGENT = "agent.json"
LAST_ROUND = "last_round.json"


@dataclass(frozen=True)
class AgentInfo:
    client_id: int
    coordinator: str  # HOST:PORT of the agent port
    enrolled_at: str  # ISO 8601, UTC
    label: str = ""
    insecure: bool = False


@dataclass(frozen=True)
class LastRound:
    round_id: str
    outcome: str
    model_version: int | None
    reason: str
    finished_at: str  # ISO 8601, UTC


class StateDir:
    """An agent's state directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def cache(self) -> Path:
        return self.path / "cache"

    @property
    def enrolled(self) -> bool:
        return (self.path / AGENT).exists()

    def _file(self, name: str) -> Path:
        return self.path / name

    def _read(self, name: str) -> bytes:
        path = self._file(name)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise EdgeError(
                ErrorCode.STATE,
                f"{path} is missing: the state directory is incomplete; enroll again into a "
                "new directory with `fedadamw-edge enroll`",
            ) from exc
        except OSError as exc:
            raise EdgeError(ErrorCode.STATE, f"cannot read {path}: {exc}") from exc

    def save_enrollment(self, credentials: Credentials, info: AgentInfo) -> None:
        """Store a fresh enrollment. Refuses a directory that already holds one."""
        if self.enrolled:
            raise EdgeError(
                ErrorCode.ALREADY_ENROLLED,
                f"{self.path} already holds the enrollment of client "
                f"{self.info().client_id}; use another --state-dir to enroll again",
            )
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        identity = credentials.identity_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomically(self._file(IDENTITY_KEY), identity, mode=0o600)
        write_atomically(self._file(TLS_KEY), credentials.tls_key_pem, mode=0o600)
        write_atomically(self._file(CERTIFICATE), credentials.certificate_pem, mode=0o644)
        write_atomically(self._file(CA_CERTIFICATE), credentials.ca_certificate_pem, mode=0o644)
        # agent.json last: its presence marks a complete enrollment
        write_atomically(self._file(AGENT), json.dumps(asdict(info), indent=2).encode(), mode=0o644)

    def info(self) -> AgentInfo:
        try:
            data = json.loads(self._read(AGENT))
            return AgentInfo(**data)
        except EdgeError:
            raise
        except (TypeError, ValueError) as exc:
            raise EdgeError(ErrorCode.STATE, f"{self._file(AGENT)} is damaged: {exc}") from exc

    def credentials(self) -> Credentials:
        """The enrolled keys and certificates, each checked to parse and to belong together."""
        info = self.info()
        try:
            identity = serialization.load_pem_private_key(self._read(IDENTITY_KEY), password=None)
        except ValueError as exc:
            raise EdgeError(
                ErrorCode.STATE, f"{self._file(IDENTITY_KEY)} is damaged: not a PEM private key"
            ) from exc
        if not isinstance(identity, Ed25519PrivateKey):
            raise EdgeError(ErrorCode.STATE, f"{self._file(IDENTITY_KEY)} is not an Ed25519 key")
        tls_key_pem = b""
        certificate_pem = b""
        ca_pem = b""
        if not info.insecure:
            tls_key_pem = self._read(TLS_KEY)
            certificate_pem = self._read(CERTIFICATE)
            ca_pem = self._read(CA_CERTIFICATE)
            try:
                tls_key = serialization.load_pem_private_key(tls_key_pem, password=None)
                certificate = x509.load_pem_x509_certificate(certificate_pem)
                x509.load_pem_x509_certificate(ca_pem)
            except ValueError as exc:
                raise EdgeError(
                    ErrorCode.STATE,
                    f"a key or certificate in {self.path} is damaged ({exc}); enroll again",
                ) from exc
            public = certificate.public_key()
            if (
                not isinstance(tls_key, ec.EllipticCurvePrivateKey)
                or not isinstance(public, ec.EllipticCurvePublicKey)
                or public.public_numbers() != tls_key.public_key().public_numbers()
            ):
                raise EdgeError(
                    ErrorCode.STATE,
                    f"{self._file(TLS_KEY)} does not match {self._file(CERTIFICATE)}; enroll again",
                )
        return Credentials(
            client_id=info.client_id,
            identity_key=identity,
            tls_key_pem=tls_key_pem,
            certificate_pem=certificate_pem,
            ca_certificate_pem=ca_pem,
        )

    def save_last_round(self, last: LastRound) -> None:
        write_atomically(
            self._file(LAST_ROUND), json.dumps(asdict(last), indent=2).encode(), mode=0o644
        )

    def last_round(self) -> LastRound | None:
        path = self._file(LAST_ROUND)
        if not path.exists():
            return None
        try:
            return LastRound(**json.loads(path.read_bytes()))
        except (TypeError, ValueError):
            return None  # only informational: a damaged record is not worth stopping for

    def describe(self) -> dict[str, Any]:
        """What ``fedadamw-edge status`` shows."""
        info = self.info()
        last = self.last_round()
        return {
            "state_dir": str(self.path),
            "client_id": info.client_id,
            "coordinator": info.coordinator,
            "enrolled_at": info.enrolled_at,
            "label": info.label,
            "insecure": info.insecure,
            "last_round": asdict(last) if last is not None else None,
        }

"""Builders for the store contract suite: clients, versions, rounds and their records."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from coordinator.domain import (
    AdvertisedKeysRecord,
    Client,
    ConsistencySignatureRecord,
    EnrollmentToken,
    InputChunkRecord,
    ModelVersion,
    Participant,
    Round,
    RoundOutcome,
    RoundPhase,
    ShareRecord,
    UnmaskRecord,
)
from coordinator.errors import ErrorCode, StoreError
from coordinator.store.base import Store
from coordinator.transitions import NEXT_PHASE

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def digest(label: str | bytes) -> str:
    data = label.encode() if isinstance(label, str) else label
    return hashlib.sha256(data).hexdigest()


def issue_certificate(client_id: int) -> tuple[bytes, int]:
    return f"-----CERT {client_id}-----".encode(), 10_000 + client_id


def token(label: str, *, expires_in: float = 3600) -> EnrollmentToken:
    return EnrollmentToken(token_hash=digest(label), created_at=T0, expires_at=at(expires_in))


def enroll(store: Store, label: str, *, key: bytes | None = None) -> Client:
    """A new client through a fresh token named ``label``."""
    store.create_token(token(f"token-{label}"))
    return store.enroll(
        token_hash=digest(f"token-{label}"),
        identity_key=key if key is not None else digest(f"key-{label}").encode()[:32],
        label=label,
        now=at(1),
        issue_certificate=issue_certificate,
    )


def version(number: int, *, round_id: str | None = None, created: float = 0) -> ModelVersion:
    return ModelVersion(
        version=number,
        created_at=at(created),
        model_sha256=digest(f"x{number}"),
        global_update_sha256=digest(f"g{number}"),
        second_moment_sha256=digest(f"v{number}"),
        global_step=50 * number,
        layout_fingerprint="layout-1",
        round_id=round_id,
        num_clients=0 if round_id is None else 2,
    )


def new_round(round_id: str, *, number: int = 0, model_version: int = 0) -> Round:
    return Round(
        round_id=round_id,
        number=number,
        model_version=model_version,
        phase=RoundPhase.ADVERTISE_KEYS,
        outcome=RoundOutcome.RUNNING,
        config='{"k": 3}',
        started_at=at(10),
        deadline=at(70),
    )


def cohort(round_id: str, clients: list[Client]) -> list[Participant]:
    return [
        Participant(round_id=round_id, client_id=client.client_id, secagg_id=index)
        for index, client in enumerate(clients, start=1)
    ]


def start_round(
    store: Store, round_id: str = "r0", *, clients: int = 3, number: int = 0
) -> tuple[Round, list[Client]]:
    """A round in ADVERTISE_KEYS over ``clients`` new clients, from the latest version
    (version 0, stored here if the store has none)."""
    latest = store.latest_version()
    if latest is None:
        store.add_initial_version(version(0))
        latest = version(0)
    enrolled = [enroll(store, f"{round_id}-c{i}") for i in range(clients)]
    round_ = new_round(round_id, number=number, model_version=latest.version)
    store.create_round(round_, cohort(round_id, enrolled))
    return round_, enrolled


def advance_to(store: Store, round_id: str, phase: RoundPhase, *, now: float = 100) -> Round:
    """Move an open round forward, one phase at a time, until it is in ``phase``."""
    current = store.get_round(round_id)
    step = 0
    while current.phase is not phase:
        step += 1
        current = store.advance_phase(
            round_id,
            expected=current.phase,
            new=NEXT_PHASE[current.phase],
            now=at(now + step),
            deadline=at(now + step + 60),
            dropped={},
        )
    return current


def keys(round_id: str, secagg_id: int, *, variant: str = "") -> AdvertisedKeysRecord:
    return AdvertisedKeysRecord(
        round_id=round_id,
        secagg_id=secagg_id,
        encryption_key=f"c-pk-{secagg_id}{variant}".encode(),
        masking_key=f"s-pk-{secagg_id}".encode(),
        self_mask_commitment=f"b-commit-{secagg_id}".encode(),
        signature=f"sig-{secagg_id}".encode(),
    )


def shares(
    round_id: str, sender: int, recipients: list[int], *, variant: str = ""
) -> list[ShareRecord]:
    return [
        ShareRecord(
            round_id=round_id,
            sender=sender,
            recipient=recipient,
            ciphertext=f"sealed {sender}->{recipient}{variant}".encode(),
        )
        for recipient in recipients
    ]


def chunk(round_id: str, secagg_id: int, index: int, *, variant: str = "") -> InputChunkRecord:
    return InputChunkRecord(
        round_id=round_id,
        secagg_id=secagg_id,
        chunk_index=index,
        sha256=digest(f"chunk {secagg_id}/{index}{variant}"),
    )


def signature(round_id: str, secagg_id: int, *, variant: str = "") -> ConsistencySignatureRecord:
    return ConsistencySignatureRecord(
        round_id=round_id, secagg_id=secagg_id, signature=f"sig {secagg_id}{variant}".encode()
    )


def unmask(
    round_id: str,
    secagg_id: int,
    *,
    survivors: Sequence[int],
    dropped: Sequence[int] = (),
    variant: str = "",
) -> UnmaskRecord:
    return UnmaskRecord(
        round_id=round_id,
        secagg_id=secagg_id,
        self_mask_shares=tuple(
            (owner, f"b {secagg_id}:{owner}{variant}".encode().ljust(32, b"."))
            for owner in survivors
        ),
        key_shares=tuple(
            (owner, f"s {secagg_id}:{owner}".encode().ljust(32, b".")) for owner in dropped
        ),
    )


def raises_code(code: ErrorCode, call: Callable[[], object]) -> StoreError:
    """Run ``call``, which must raise ``StoreError`` with ``code``; return the error."""
    with pytest.raises(StoreError) as caught:
        call()
    assert caught.value.code is code, f"{caught.value.code}: {caught.value}"
    return caught.value

"""Conversions between the wire (``fedadamw.v1`` protobuf) and the coordinator's types.

Every conversion lives here, in matching pairs where both directions exist. Conversions
from the wire check sizes and shapes before anything else sees the data, and raise
``CoordinatorError(INVALID_ARGUMENT)`` (or ``TOO_LARGE``) naming the field.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from coordinator.domain import (
    PHASE_ORDER,
    AdvertisedKeysRecord,
    ConsistencySignatureRecord,
    RoundOutcome,
    RoundPhase,
    ShareRecord,
    UnmaskRecord,
)
from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.ingest import UploadProgress
from coordinator.round_settings import RoundSettings
from coordinator.round_state import RoundEvent
from secure_agg import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeysBroadcast,
    RevealedShare,
    ServerMessage,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from wire.v1 import edge_pb2 as pb

__all__ = [
    "advertise_from_proto",
    "check_round_id",
    "check_sha256",
    "event_to_proto",
    "exact",
    "phase_from_proto",
    "phase_to_proto",
    "settings_to_proto",
    "shares_from_proto",
    "signature_from_proto",
    "unmask_from_proto",
    "upload_status_to_proto",
]

KEY_BYTES = 32  # X25519 and Ed25519 public keys
COMMITMENT_BYTES = 32  # SHA-256 commitment to the self-mask secret
SIGNATURE_BYTES = 64  # Ed25519
SESSION_BYTES = 32
SHARE_BYTES = 32  # a field element of 2^255 - 19
MAX_CIPHERTEXT_BYTES = 256
MAX_ROUND_ID = 64
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

_PHASES = {
    RoundPhase.ADVERTISE_KEYS: pb.PHASE_ADVERTISE_KEYS,
    RoundPhase.SHARE_KEYS: pb.PHASE_SHARE_KEYS,
    RoundPhase.MASKED_INPUT: pb.PHASE_MASKED_INPUT,
    RoundPhase.CONSISTENCY_CHECK: pb.PHASE_CONSISTENCY_CHECK,
    RoundPhase.UNMASKING: pb.PHASE_UNMASKING,
    RoundPhase.COMMITTED: pb.PHASE_COMMITTED,
    RoundPhase.ABORTED: pb.PHASE_ABORTED,
}
_PHASES_BACK: dict[int, RoundPhase] = {int(v): k for k, v in _PHASES.items()}


def _invalid(message: str) -> CoordinatorError:
    return CoordinatorError(ErrorCode.INVALID_ARGUMENT, message)


def exact(name: str, value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise _invalid(f"{name} must be {size} bytes, got {len(value)}")
    return bytes(value)


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def check_round_id(round_id: str) -> str:
    if not round_id or len(round_id) > MAX_ROUND_ID:
        raise _invalid(f"round_id must be 1 to {MAX_ROUND_ID} characters")
    return round_id


def check_sha256(value: str) -> str:
    """A blob name as the wire carries it: 64 lowercase hex characters."""
    if _SHA256_HEX.fullmatch(value) is None:
        raise _invalid("sha256 must be 64 lowercase hex characters")
    return value


def phase_to_proto(phase: RoundPhase) -> pb.Phase:
    return _PHASES[phase]


def phase_from_proto(phase: int) -> RoundPhase:
    try:
        return _PHASES_BACK[phase]
    except KeyError as exc:
        raise _invalid(f"phase {phase} is not a round phase") from exc


def seen_phase_from_proto(phase: int) -> RoundPhase | None:
    """The latest phase a read says its agent has seen; ``None`` for none yet."""
    return None if phase == pb.PHASE_UNSPECIFIED else phase_from_proto(phase)


def settings_to_proto(
    settings: RoundSettings, *, secagg_id: int, started_at: datetime, phase: RoundPhase
) -> pb.RoundConfig:
    deadlines = settings.deadlines_from(started_at)
    return pb.RoundConfig(
        round_id=settings.round_id,
        phase=phase_to_proto(phase),
        round_number=settings.number,
        model_version=settings.model_version,
        task=settings.task,
        algorithm=settings.algorithm,
        layout_fingerprint=settings.layout_fingerprint,
        block_mode=settings.block_mode or "",
        model=pb.BlobRef(sha256=settings.model_sha256, size=settings.model_bytes),
        global_update=pb.BlobRef(sha256=settings.global_update_sha256, size=settings.model_bytes),
        second_moment=pb.BlobRef(
            sha256=settings.second_moment_sha256, size=settings.second_moment_bytes
        ),
        hyper=pb.Hyperparameters(
            lr=settings.lr,
            beta1=settings.beta1,
            beta2=settings.beta2,
            eps=settings.eps,
            weight_decay=settings.weight_decay,
            alpha=settings.alpha,
            clip_norm=settings.clip_norm,
        ),
        local_steps=settings.local_steps,
        global_step=settings.global_step,
        batch_size=settings.batch_size,
        secagg_session_json=_canonical(settings.session().to_dict()) if settings.secure else "",
        secagg_id=secagg_id,
        chunk_elements=settings.chunk_elements,
        total_chunks=settings.total_chunks,
        deadlines=[
            pb.PhaseDeadline(phase=_PHASES[phase], unix_ms=int(deadlines[phase].timestamp() * 1000))
            for phase in PHASE_ORDER
        ],
        quantization_json=_canonical(settings.quantization),
        secure_aggregation=settings.secure,
    )


_last_broadcast: list[tuple[object, pb.KeysBroadcast]] = []
"""The newest broadcast's keys and their message: the share-keys phase sends every
participant the same n advertisements, so they are converted once per round, not n times."""


def _broadcast_to_proto(message: KeysBroadcast) -> pb.KeysBroadcast:
    if _last_broadcast and _last_broadcast[0][0] is message.keys:
        return _last_broadcast[0][1]
    out = pb.KeysBroadcast(
        keys=[
            pb.AdvertisedKeys(
                secagg_id=k.client_id,
                identity_key=k.identity_key,
                encryption_key=k.encryption_key,
                masking_key=k.masking_key,
                signature=k.signature,
                self_mask_commitment=k.self_mask_commitment,
            )
            for k in message.keys
        ]
    )
    _last_broadcast[:] = [(message.keys, out)]
    return out


def _message_to_proto(message: ServerMessage) -> dict[str, object]:
    if isinstance(message, KeysBroadcast):
        return {"keys": _broadcast_to_proto(message)}
    if isinstance(message, SharesDelivery):
        return {
            "shares": pb.SharesDelivery(
                session_id=message.session_id,
                shares=[
                    pb.EncryptedShare(
                        sender=s.sender, recipient=s.recipient, ciphertext=s.ciphertext
                    )
                    for s in message.shares
                ],
                dead=list(message.dead),
            )
        }
    if isinstance(message, ConsistencyRequest):
        return {
            "consistency": pb.ConsistencyRequest(
                session_id=message.session_id, alive=list(message.alive), dead=list(message.dead)
            )
        }
    if isinstance(message, UnmaskRequest):
        return {
            "unmask": pb.UnmaskPrompt(
                session_id=message.session_id,
                signatures=[
                    pb.SurvivorSignature(secagg_id=s.client_id, signature=s.signature)
                    for s in message.signatures
                ],
            )
        }
    return {}  # RoundAborted: the round's end comes as RoundFinished


def event_to_proto(event: RoundEvent) -> pb.RoundEvent:
    out = pb.RoundEvent(round_id=event.round_id, phase=_PHASES[event.phase])
    if event.outcome is not None:
        out.finished.CopyFrom(
            pb.RoundFinished(
                outcome=pb.OUTCOME_COMMITTED
                if event.outcome is RoundOutcome.COMMITTED
                else pb.OUTCOME_ABORTED,
                model_version=event.model_version or 0,
                reason=event.reason or "",
            )
        )
        return out
    if event.message is not None:
        for field, value in _message_to_proto(event.message).items():
            getattr(out, field).CopyFrom(value)
    return out


def advertise_from_proto(
    request: pb.AdvertiseKeysRequest, *, secagg_id: int, identity_key: bytes
) -> tuple[AdvertiseKeys, AdvertisedKeysRecord]:
    encryption = exact("encryption_key", request.encryption_key, KEY_BYTES)
    masking = exact("masking_key", request.masking_key, KEY_BYTES)
    signature = exact("signature", request.signature, SIGNATURE_BYTES)
    commitment = exact("self_mask_commitment", request.self_mask_commitment, COMMITMENT_BYTES)
    message = AdvertiseKeys(
        round_id=request.round_id,
        client_id=secagg_id,
        identity_key=identity_key,
        encryption_key=encryption,
        masking_key=masking,
        self_mask_commitment=commitment,
        signature=signature,
    )
    record = AdvertisedKeysRecord(
        round_id=request.round_id,
        secagg_id=secagg_id,
        encryption_key=encryption,
        masking_key=masking,
        self_mask_commitment=commitment,
        signature=signature,
    )
    return message, record


def shares_from_proto(
    request: pb.ShareKeysRequest, *, secagg_id: int, cohort_size: int
) -> tuple[ShareKeys, list[ShareRecord]]:
    session_id = exact("session_id", request.session_id, SESSION_BYTES)
    if len(request.shares) > cohort_size:
        raise CoordinatorError(
            ErrorCode.TOO_LARGE, f"{len(request.shares)} shares for a cohort of {cohort_size}"
        )
    shares, records = [], []
    for share in request.shares:
        if len(share.ciphertext) > MAX_CIPHERTEXT_BYTES:
            raise CoordinatorError(
                ErrorCode.TOO_LARGE,
                f"a share's ciphertext is {len(share.ciphertext)} bytes, "
                f"the limit is {MAX_CIPHERTEXT_BYTES}",
            )
        if share.sender not in (0, secagg_id):
            raise _invalid(f"shares must come from secagg id {secagg_id}, not {share.sender}")
        shares.append(
            EncryptedShare(
                session_id=session_id,
                sender=secagg_id,
                recipient=share.recipient,
                ciphertext=bytes(share.ciphertext),
            )
        )
        records.append(
            ShareRecord(
                round_id=request.round_id,
                sender=secagg_id,
                recipient=share.recipient,
                ciphertext=bytes(share.ciphertext),
            )
        )
    return ShareKeys(session_id=session_id, client_id=secagg_id, shares=tuple(shares)), records


def signature_from_proto(
    request: pb.ConsistencySignatureRequest, *, secagg_id: int
) -> tuple[ConsistencySignature, ConsistencySignatureRecord]:
    session_id = exact("session_id", request.session_id, SESSION_BYTES)
    signature = exact("signature", request.signature, SIGNATURE_BYTES)
    return (
        ConsistencySignature(session_id=session_id, client_id=secagg_id, signature=signature),
        ConsistencySignatureRecord(
            round_id=request.round_id, secagg_id=secagg_id, signature=signature
        ),
    )


def _revealed(name: str, shares: object, cohort_size: int) -> tuple[tuple[int, bytes], ...]:
    items = list(shares)  # type: ignore[call-overload]
    if len(items) > cohort_size:
        raise CoordinatorError(
            ErrorCode.TOO_LARGE, f"{len(items)} {name} for a cohort of {cohort_size}"
        )
    return tuple((int(s.owner), exact(f"{name} share", s.share, SHARE_BYTES)) for s in items)


def unmask_from_proto(
    request: pb.UnmaskRequest, *, secagg_id: int, cohort_size: int
) -> tuple[UnmaskResponse, UnmaskRecord]:
    session_id = exact("session_id", request.session_id, SESSION_BYTES)
    self_masks = _revealed("self_mask_shares", request.self_mask_shares, cohort_size)
    keys = _revealed("key_shares", request.key_shares, cohort_size)
    message = UnmaskResponse(
        session_id=session_id,
        client_id=secagg_id,
        self_mask_shares=tuple(RevealedShare(owner=o, share=s) for o, s in self_masks),
        key_shares=tuple(RevealedShare(owner=o, share=s) for o, s in keys),
    )
    record = UnmaskRecord(
        round_id=request.round_id,
        secagg_id=secagg_id,
        self_mask_shares=self_masks,
        key_shares=keys,
    )
    return message, record


def upload_status_to_proto(progress: UploadProgress) -> pb.UploadStatus:
    return pb.UploadStatus(
        round_id=progress.round_id,
        total_chunks=progress.total_chunks,
        received_chunks=list(progress.received),
        complete=progress.complete,
        phase=phase_to_proto(progress.phase),
    )

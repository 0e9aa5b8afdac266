"""One round's settings: what every selected agent is told, fixed when the round starts.

``RoundSettings`` is stored as canonical JSON in the round's database row, so a restarted
coordinator rebuilds exactly the same round, and it maps onto the ``RoundConfig`` message.
``plan_round`` derives it from the service configuration, the model version the round
trains and the cohort size:

- the learning rate η_r of the schedule at r = the model version (rounds that abort do not
  advance the schedule);
- secure aggregation's threshold t and neighbour degree k, chosen for the cohort size
  (``secure_agg.choose_parameters``) unless the configuration fixes them;
- the quantization layout [Δ (d) | v̄ block means (B) | weight | samples | train loss |
  clip count]: deltas clip at ``delta_clip_factor × K × η_r`` (an AdamW step moves a
  coordinate by about η), second-moment means at ``moment_max``, the weight (each client's
  is 1) at 1; samples and training loss are statistics the coordinator sees only summed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from coordinator.config import CoordinatorConfig
from coordinator.domain import PHASE_ORDER, ModelVersion, RoundPhase
from coordinator.errors import CoordinatorError, ErrorCode
from fedadamw.server import cosine_lr
from secure_agg import (
    SecAggError,
    SecAggParams,
    SegmentLayout,
    SessionConfig,
    choose_parameters,
    update_layout,
)

__all__ = ["RoundSettings", "plan_round"]

LOSS_MAX = 100.0  # the range of the securely summed mean training loss; higher values clip


@dataclass(frozen=True)
class RoundSettings:
    """Everything fixed about one round. Blob fields are sha256 hex; sizes are in bytes."""

    round_id: str
    number: int
    model_version: int
    task: str
    algorithm: str
    block_mode: str | None
    layout_fingerprint: str
    model_length: int
    num_blocks: int
    model_sha256: str
    global_update_sha256: str
    second_moment_sha256: str
    model_bytes: int
    second_moment_bytes: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    alpha: float
    clip_norm: float
    server_lr: float
    local_steps: int
    global_step: int
    batch_size: int
    secure: bool
    threshold: int
    degree: int | None
    quantization: dict[str, Any]
    chunk_elements: int
    phase_seconds: dict[str, float]
    min_clients: int

    @property
    def layout(self) -> SegmentLayout:
        return SegmentLayout.from_dict(self.quantization)

    @property
    def total_chunks(self) -> int:
        return math.ceil(self.layout.length / self.chunk_elements)

    def chunk_length(self, index: int) -> int:
        """Ring elements in upload chunk ``index`` (the last may be shorter)."""
        total = self.layout.length
        if not 0 <= index < self.total_chunks:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"chunk index {index} is outside 0..{self.total_chunks - 1}",
            )
        return min(self.chunk_elements, total - index * self.chunk_elements)

    def session(self) -> SessionConfig:
        """The secure-aggregation session (its params bind t, k and the layout)."""
        params = SecAggParams(threshold=self.threshold, degree=self.degree, layout=self.layout)
        return SessionConfig(
            round_id=self.round_id, model_hash=bytes.fromhex(self.model_sha256), params=params
        )

    def phase_duration(self, phase: RoundPhase) -> timedelta:
        return timedelta(seconds=self.phase_seconds[phase.value])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RoundSettings:
        try:
            data = json.loads(text)
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise CoordinatorError(
                ErrorCode.INTERNAL, f"a stored round configuration is unreadable: {exc}"
            ) from exc

    def deadlines_from(self, start: datetime) -> dict[RoundPhase, datetime]:
        """Each phase's latest end if every phase ran to its deadline from ``start``."""
        out, at = {}, start
        for phase in PHASE_ORDER:
            at += self.phase_duration(phase)
            out[phase] = at
        return out


def plan_round(
    config: CoordinatorConfig,
    *,
    round_id: str,
    number: int,
    version: ModelVersion,
    cohort_size: int,
    model_length: int,
    num_blocks: int,
    block_mode: str | None,
    blob_sizes: Mapping[str, int],
) -> RoundSettings:
    """The settings of a round of ``cohort_size`` clients training ``version``.

    Raises ``CoordinatorError(INVALID_ARGUMENT)`` when secure aggregation cannot work for
    this cohort size (for example a configured threshold above it).
    """
    lr = (
        cosine_lr(config.lr, min(version.version, config.rounds - 1), config.rounds)
        if config.schedule == "cosine"
        else config.lr
    )
    sa = config.secure_aggregation
    fa = config.fedadamw
    try:
        chosen = (
            None
            if sa.threshold and sa.degree
            else choose_parameters(
                cohort_size, dropout_rate=sa.dropout_rate, corrupt_rate=sa.corrupt_rate
            )
        )
        threshold = sa.threshold or (chosen.threshold if chosen else 2)
        degree = sa.degree or (chosen.degree if chosen else None)
        if degree is not None and degree >= cohort_size - 1:
            degree = None  # every other client is a neighbour: the complete graph
        layout = update_layout(
            delta_length=model_length,
            delta_clip=sa.delta_clip_factor * config.local_steps * lr,
            moment_length=num_blocks,
            moment_max=sa.moment_max,
            weight_max=1.0,
            max_clients=cohort_size,
            ring_bits=sa.ring_bits,
            samples_max=float(config.local_steps * config.batch_size),
            loss_max=LOSS_MAX,
        )
        if sa.enabled:
            SecAggParams(threshold=threshold, degree=degree, layout=layout)
    except SecAggError as exc:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"secure aggregation cannot run a cohort of {cohort_size}: {exc}",
        ) from exc
    deadlines = config.deadlines
    return RoundSettings(
        round_id=round_id,
        number=number,
        model_version=version.version,
        task=config.task,
        algorithm=config.algorithm,
        block_mode=block_mode,
        layout_fingerprint=version.layout_fingerprint,
        model_length=model_length,
        num_blocks=num_blocks,
        model_sha256=version.model_sha256,
        global_update_sha256=version.global_update_sha256,
        second_moment_sha256=version.second_moment_sha256,
        model_bytes=blob_sizes["model"],
        second_moment_bytes=blob_sizes["second_moment"],
        lr=lr,
        beta1=fa.beta1,
        beta2=fa.beta2,
        eps=fa.eps,
        weight_decay=fa.weight_decay,
        alpha=fa.alpha,
        clip_norm=fa.clip_norm,
        server_lr=fa.server_lr,
        local_steps=config.local_steps,
        global_step=version.global_step,
        batch_size=config.batch_size,
        secure=sa.enabled,
        threshold=threshold,
        degree=degree,
        quantization=layout.to_dict(),
        chunk_elements=config.limits.chunk_elements,
        phase_seconds={phase.value: getattr(deadlines, phase.value) for phase in PHASE_ORDER},
        min_clients=config.min_clients,
    )

"""What the round driver reports, and the listener that logs it and counts it in metrics.

The driver (``coordinator.driver``) calls a ``RoundListener`` at each step of a round and at
each fault of its own, and knows nothing of log formats or metric names. ``ObservingListener``
is the one the service runs: it logs each event and updates the Prometheus metrics
(docs/architecture.md, section 7). Tests can pass a listener that records the calls.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from coordinator.domain import (
    ModelVersion,
    Participant,
    Round,
    RoundOutcome,
    RoundPhase,
    RoundSums,
)
from coordinator.metrics import Metrics
from coordinator.reasons import Dropped, RoundAbortReason
from coordinator.retention import RetentionReport
from coordinator.round_state import Advance, RoundState

if TYPE_CHECKING:
    from fedadamw.tasks import Evaluation

__all__ = ["OUTVOTED", "ObservingListener", "RoundListener"]

log = logging.getLogger("coordinator.rounds")

OUTVOTED = "outvoted"
"""The ``reason`` of :meth:`RoundListener.culprits` when the round went on without them."""


class RoundListener(Protocol):
    """The driver's events; every method must return quickly and never raise."""

    def initial_version_stored(self, version: ModelVersion, parameters: int) -> None: ...

    def round_started(self, state: RoundState, selected: int) -> None: ...

    def round_resumed(self, state: RoundState) -> None: ...

    def resume_failed(self, round_: Round, error: Exception) -> None: ...

    def dropped(self, phase: RoundPhase, dropped: Mapping[int, Dropped]) -> None: ...

    def refused_and_dropped(
        self, state: RoundState, participant: Participant, dropped: Dropped, error: Exception
    ) -> None: ...

    def phase_closed(self, state: RoundState, decision: Advance, seconds: float) -> None: ...

    def unmasked(self, seconds: float) -> None: ...

    def committed(self, round_: Round, version: ModelVersion, sums: RoundSums) -> None: ...

    def aborted(self, round_: Round, phase: RoundPhase, reason: RoundAbortReason) -> None: ...

    def aborts_in_a_row(self, count: int, reason: RoundAbortReason, delay: float) -> None: ...

    def culprits(self, state: RoundState, clients: tuple[int, ...], reason: str) -> None:
        """Clients whose revealed shares were outvoted: ``reason`` is the abort's, or
        :data:`OUTVOTED` where the round went on without their shares."""

    def round_ended(self, outcome: RoundOutcome, survivors: int, seconds: float) -> None: ...

    def evaluated(self, version: ModelVersion, evaluation: Evaluation) -> None: ...

    def evaluation_failed(self, version: ModelVersion, error: Exception) -> None: ...

    def training_finished(self, rounds: int) -> None: ...

    def retention_applied(self, report: RetentionReport) -> None: ...

    def round_not_started(self, error: Exception) -> None: ...

    def selected_client_revoked(self, error: Exception) -> None:
        """The store refused a cohort with a client revoked since it was selected."""

    def driver_fault(
        self, stage: str, state: RoundState | None, error: Exception, delay: float, faults: int
    ) -> None: ...

    def driver_recovered(self, faults: int) -> None: ...

    def audit_failed(self, action: str, error: Exception) -> None: ...

    def driver_died(self, stage: str, error: BaseException) -> None: ...


def _stage(stage: str) -> str:
    return stage.replace("_", " ")


class ObservingListener:
    """Logs every driver event and keeps the round metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def initial_version_stored(self, version: ModelVersion, parameters: int) -> None:
        log.info(
            "stored the initial model (version %d, %d parameters)", version.version, parameters
        )

    def round_started(self, state: RoundState, selected: int) -> None:
        settings = state.settings
        self.metrics.cohort.set(len(state.participants))
        self.metrics.selected.inc(selected)
        self.metrics.set_phase(state.phase)
        secure = (
            f"secure aggregation (t={settings.threshold}, "
            f"k={settings.degree if settings.degree is not None else 'complete'}, "
            f"ring 2^{settings.layout.ring_bits})"
            if settings.secure
            else "PLAIN sums (no secure aggregation)"
        )
        log.info(
            "round %d (%s) started: %d clients, model version %d, lr %.3g, %s",
            state.round.number,
            state.round_id,
            len(state.participants),
            settings.model_version,
            settings.lr,
            secure,
        )

    def round_resumed(self, state: RoundState) -> None:
        self.metrics.set_phase(state.phase)
        self.metrics.cohort.set(len(state.participants))
        log.info(
            "resumed round %d (%s) in phase %s with %d participants",
            state.round.number,
            state.round_id,
            state.phase.value,
            len(state.participants),
        )

    def resume_failed(self, round_: Round, error: Exception) -> None:
        log.error("cannot resume round %s: %s; aborting it", round_.round_id, error)

    def dropped(self, phase: RoundPhase, dropped: Mapping[int, Dropped]) -> None:
        for drop in dropped.values():
            self.metrics.dropouts.labels(phase.value, drop.label).inc()

    def refused_and_dropped(
        self, state: RoundState, participant: Participant, dropped: Dropped, error: Exception
    ) -> None:
        log.warning(
            "round %s: client %d dropped (%s): %s",
            state.round_id,
            participant.client_id,
            dropped.label,
            error,
        )
        self.metrics.dropouts.labels(state.phase.value, dropped.label).inc()

    def phase_closed(self, state: RoundState, decision: Advance, seconds: float) -> None:
        log.info(
            "round %d: %s closed (%d alive, %d dropped) -> %s",
            state.round.number,
            decision.phase.value,
            decision.alive,
            len(decision.dropped),
            decision.new_phase.value,
        )
        self.metrics.phase_seconds.labels(decision.phase.value).observe(seconds)
        self.metrics.set_phase(decision.new_phase)

    def unmasked(self, seconds: float) -> None:
        self.metrics.unmask_seconds.observe(seconds)

    def committed(self, round_: Round, version: ModelVersion, sums: RoundSums) -> None:
        mean_loss = sums.train_loss / sums.survivors
        self.metrics.clipped_values.inc(sums.clipped)
        self.metrics.samples.inc(sums.samples)
        self.metrics.train_loss.set(mean_loss)
        self.metrics.model_version.set(version.version)
        log.info(
            "round %d committed model version %d from %d clients: mean train loss %.4f, "
            "%d samples, %d delta values clipped",
            round_.number,
            version.version,
            sums.survivors,
            mean_loss,
            round(sums.samples),
            int(sums.clipped),
        )

    def aborted(self, round_: Round, phase: RoundPhase, reason: RoundAbortReason) -> None:
        log.warning("round %d aborted in %s: %s", round_.number, phase.value, reason.value)
        self.metrics.aborts.labels(phase.value, reason.value).inc()

    def aborts_in_a_row(self, count: int, reason: RoundAbortReason, delay: float) -> None:
        log.warning(
            "%d rounds in a row aborted (the last: %s); the next round waits %.1fs",
            count,
            reason.value,
            delay,
        )

    def culprits(self, state: RoundState, clients: tuple[int, ...], reason: str) -> None:
        if reason == OUTVOTED:
            self.metrics.forgers.labels("outvoted").inc(len(clients))
            log.error(
                "round %s: clients %s revealed shares that the others outvote (forged by "
                "them, or dealt so by the secret's owner); the secrets were rebuilt without "
                "them, each met its commitment, and the round goes on",
                state.round_id,
                list(clients),
            )
            return
        self.metrics.forgers.labels("aborted").inc(len(clients))
        log.error(
            "round %s: clients %s revealed forged shares (%s); the round aborts without a sum",
            state.round_id,
            list(clients),
            reason,
        )

    def round_ended(self, outcome: RoundOutcome, survivors: int, seconds: float) -> None:
        self.metrics.rounds.labels(outcome.value).inc()
        self.metrics.survivors.set(survivors)
        self.metrics.set_phase(None)
        self.metrics.round_seconds.observe(seconds)

    def evaluated(self, version: ModelVersion, evaluation: Evaluation) -> None:
        self.metrics.test_loss.set(evaluation.loss)
        if evaluation.accuracy is not None:
            self.metrics.test_accuracy.set(evaluation.accuracy)
        log.info(
            "model version %d: test loss %.4f, accuracy %s",
            version.version,
            evaluation.loss,
            "n/a" if evaluation.accuracy is None else f"{evaluation.accuracy:.4f}",
        )

    def evaluation_failed(self, version: ModelVersion, error: Exception) -> None:
        log.error("evaluating model version %d failed: %s", version.version, error)

    def training_finished(self, rounds: int) -> None:
        log.info("all %d rounds committed; idle", rounds)

    def retention_applied(self, report: RetentionReport) -> None:
        self.metrics.blob_store_bytes.set(report.blob_bytes)
        self.metrics.retained_versions.set(report.retained_versions)
        if report.released or report.deleted_blobs:
            log.info(
                "retention: released model versions %s, deleted %d blobs; %d versions and "
                "%d blobs (%d bytes) kept",
                list(report.released) or "none",
                report.deleted_blobs,
                report.retained_versions,
                report.blob_count,
                report.blob_bytes,
            )
        if report.forgotten_rounds:
            log.info(
                "retention: deleted %d ended rounds from the history ([retention] keep_rounds)",
                report.forgotten_rounds,
            )
        if report.missing_blobs:
            log.warning(
                "retention: %d blobs that retained model versions name are missing from the "
                "blob store (restored from an incomplete backup?); exporting those versions fails",
                report.missing_blobs,
            )

    def round_not_started(self, error: Exception) -> None:
        log.error("cannot start a round: %s", error)

    def selected_client_revoked(self, error: Exception) -> None:
        log.info("a selected client was revoked just now (%s); selecting again", error)

    def driver_fault(
        self, stage: str, state: RoundState | None, error: Exception, delay: float, faults: int
    ) -> None:
        log.error(
            "round driver: %s while it was to %s (round %s, phase %s): %s; "
            "retrying in %.1fs (fault %d)",
            type(error).__name__,
            _stage(stage),
            state.round_id if state else "none",
            state.phase.value if state else "none",
            error,
            delay,
            faults,
        )
        code = getattr(error, "code", None)
        self.metrics.driver_faults.labels(stage, getattr(code, "value", "error")).inc()
        self.metrics.driver_stalled.set(1)

    def driver_recovered(self, faults: int) -> None:
        log.info("round driver: recovered after %d faults", faults)
        self.metrics.driver_stalled.set(0)

    def audit_failed(self, action: str, error: Exception) -> None:
        log.error("cannot write the audit log (%s): %s", action, error)

    def driver_died(self, stage: str, error: BaseException) -> None:
        log.error(
            "round driver died while it was to %s: %r; the coordinator must restart",
            _stage(stage),
            error,
            exc_info=error,
        )
        self.metrics.driver_faults.labels(stage, "fatal").inc()
        self.metrics.driver_stalled.set(1)

"""What ``fedadamw-coordinator status``, ``export`` and ``version list`` read from the database
and blobs. An export pins the version it writes (docs/architecture.md, section 5)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from coordinator.blobs import BlobStore
from coordinator.domain import (
    NOT_STARTING_NOTE,
    ModelVersion,
    ParticipantStatus,
    Round,
    RoundOutcome,
)
from coordinator.errors import CoordinatorError, ErrorCode
from coordinator.retention import set_pin
from coordinator.store import Store
from coordinator.store.sql_retention import not_retained_message

__all__ = ["export_version", "format_status", "format_versions", "status_report", "versions_report"]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


def _secure_aggregation(round_: Round) -> dict[str, Any] | None:
    """The threshold t, neighbour degree k (None: the complete graph) and ring bits a round
    ran secure aggregation with, or None for a round of plain sums.

    Read by key from the round's ``RoundSettings`` JSON: ``RoundSettings.from_json`` would
    import the training code (torch), which the admin commands start without.
    """
    try:
        settings = json.loads(round_.config)
        if not settings["secure"]:
            return None
        degree = settings["degree"]
        return {
            "threshold": int(settings["threshold"]),
            "degree": None if degree is None else int(degree),
            "ring_bits": int(settings["quantization"]["ring_bits"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CoordinatorError(
            ErrorCode.INTERNAL,
            f"round {round_.number}: its stored configuration is unreadable: {exc!r}",
        ) from exc


def _secure_aggregation_text(secure: dict[str, Any] | None) -> str:
    """``t=2 k=complete ring=2^32``, or ``plain`` for a round without secure aggregation."""
    if secure is None:
        return "plain"
    degree = "complete" if secure["degree"] is None else secure["degree"]
    return f"t={secure['threshold']} k={degree} ring=2^{secure['ring_bits']}"


def _round_entry(store: Store, round_: Round) -> dict[str, Any]:
    participants = store.list_participants(round_.round_id)
    timings = store.list_phase_timings(round_.round_id)
    dropouts = Counter(
        p.dropped_in.value
        for p in participants
        if p.status is ParticipantStatus.DROPPED and p.dropped_in is not None
    )
    committed = round_.outcome is RoundOutcome.COMMITTED
    return {
        "round": round_.number,
        "round_id": round_.round_id,
        "outcome": round_.outcome.value,
        "phase": round_.phase.value,
        "cohort": len(participants),
        "survivors": round_.survivors if round_.survivors is not None else None,
        "trained_version": round_.model_version,
        "committed_version": round_.model_version + 1 if committed else None,
        "started_at": round_.started_at.isoformat(timespec="seconds"),
        "finished_at": round_.finished_at.isoformat(timespec="seconds")
        if round_.finished_at
        else None,
        "duration_seconds": _seconds(round_.started_at, round_.finished_at),
        "abort_reason": round_.abort_reason,
        "secure_aggregation": _secure_aggregation(round_),
        "dropouts": dict(dropouts),
        "phases": [
            {
                "phase": t.phase.value,
                "seconds": _seconds(t.started_at, t.closed_at),
                "alive": t.alive,
            }
            for t in timings
        ],
    }


def _version_entry(version: ModelVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "created_at": version.created_at.isoformat(timespec="seconds"),
        "global_step": version.global_step,
        "num_clients": version.num_clients,
        "test_loss": version.test_loss,
        "test_accuracy": version.test_accuracy,
        "model_sha256": version.model_sha256,
        "retained": version.retained,
        "pinned": version.pinned,
        "blobs_deleted_at": version.blobs_deleted_at.isoformat(timespec="seconds")
        if version.blobs_deleted_at
        else None,
    }


def status_report(store: Store, *, limit: int = 50) -> dict[str, Any]:
    """The model version, versions with their evaluation, and the newest rounds."""
    latest = store.latest_version()
    note = store.get_note(NOT_STARTING_NOTE)
    return {
        "model_version": latest.version if latest is not None else None,
        # why the next round has not started, as the leader last wrote it (once a minute
        # while it waits; gone once the round starts)
        "not_starting": None
        if note is None
        else {"reason": note[0], "at": note[1].isoformat(timespec="seconds")},
        "global_step": latest.global_step if latest is not None else None,
        "test_loss": latest.test_loss if latest is not None else None,
        "test_accuracy": latest.test_accuracy if latest is not None else None,
        "versions": versions_report(store),
        "rounds": [_round_entry(store, r) for r in store.list_rounds(limit=limit)],
    }


def format_status(report: dict[str, Any]) -> str:
    """The report as a few lines and a table, for people."""
    if report["model_version"] is None:
        return "no model yet: the coordinator has not started on this data directory"
    accuracy = report["test_accuracy"]
    lines = [
        f"model version {report['model_version']} (global step {report['global_step']}), "
        f"test accuracy {'n/a' if accuracy is None else f'{accuracy:.4f}'}",
        "",
        f"{'round':>5}  {'outcome':9}  {'phase':17}  {'cohort':>6}  {'survivors':>9}  "
        f"{'version':>7}  {'seconds':>8}  {'secure aggregation':24}  dropouts / reason",
    ]
    for r in report["rounds"]:
        version = r["committed_version"] if r["committed_version"] is not None else "-"
        seconds = f"{r['duration_seconds']:.1f}" if r["duration_seconds"] is not None else "-"
        dropped = ", ".join(f"{k}:{v}" for k, v in r["dropouts"].items()) or "-"
        reason = f" ({r['abort_reason']})" if r["abort_reason"] else ""
        survivors = r["survivors"] if r["survivors"] is not None else "-"
        secure = _secure_aggregation_text(r["secure_aggregation"])
        lines.append(
            f"{r['round']:>5}  {r['outcome']:9}  {r['phase']:17}  {r['cohort']:>6}  "
            f"{survivors:>9}  {version:>7}  {seconds:>8}  {secure:24}  {dropped}{reason}"
        )
    lines += ["", _retention_line(report["versions"])]
    if report["not_starting"] is not None:
        note = report["not_starting"]
        lines.append(f"no round is starting (as of {note['at']}): {note['reason']}")
    return "\n".join(lines)


def _retention_line(versions: list[dict[str, Any]]) -> str:
    """Which versions keep their blobs: ``versions kept: 0, 3, 4 (pinned: 0); 2 released``."""
    kept = [v for v in versions if v["retained"]]
    pinned = [str(v["version"]) for v in kept if v["pinned"]]
    line = f"versions kept: {', '.join(str(v['version']) for v in kept) or 'none'}"
    if pinned:
        line += f" (pinned: {', '.join(pinned)})"
    released = len(versions) - len(kept)
    if released:
        line += f"; {released} released by the retention policy (blobs deleted)"
    return line


def format_versions(versions: list[dict[str, Any]]) -> str:
    """``version list``: one line per version, oldest first."""
    lines = [f"{'version':>7}  {'created':25}  {'step':>8}  {'accuracy':>8}  {'kept':4}  pinned"]
    for v in versions:
        accuracy = "-" if v["test_accuracy"] is None else f"{v['test_accuracy']:.4f}"
        kept = "yes" if v["retained"] else "no"
        lines.append(
            f"{v['version']:>7}  {v['created_at']:25}  {v['global_step']:>8}  {accuracy:>8}  "
            f"{kept:4}  {'yes' if v['pinned'] else '-'}"
        )
    return "\n".join(lines)


def versions_report(store: Store) -> list[dict[str, Any]]:
    """Every model version, oldest first, with whether its blobs are kept and pinned."""
    return [_version_entry(v) for v in store.list_versions()]


def export_version(
    store: Store, *, data_dir: Path, version: int | None, task: str | None, out: Path
) -> int:
    """Write a model version as a torch state dict, pinning it; returns the version written.

    ``NOT_FOUND`` for an unknown version and for one whose blobs the retention policy
    deleted (the message says it was not retained).
    """
    chosen = store.latest_version() if version is None else store.get_version(version)
    if chosen is None:
        raise CoordinatorError(ErrorCode.NOT_FOUND, "there is no model version yet")
    if not chosen.retained:  # said before torch is loaded; pinning would refuse it as well
        raise CoordinatorError(ErrorCode.NOT_FOUND, not_retained_message(chosen))

    import torch  # the other admin commands start without torch

    from fedadamw.errors import FedAdamWError
    from fedadamw.layout import FlatLayout
    from fedadamw.tasks import load_task

    if task is None:
        rounds = store.list_rounds(limit=1)
        if not rounds:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT, "no round recorded the task yet: give --task"
            )
        task = str(json.loads(rounds[0].config)["task"])  # RoundSettings JSON
    try:
        model = load_task(task).build_model(seed=0)
    except FedAdamWError as exc:
        raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, str(exc)) from exc
    layout = FlatLayout.from_model(model)
    if layout.fingerprint != chosen.layout_fingerprint:
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT,
            f"task {task} builds another model than version {chosen.version} was trained with",
        )
    # Pinned before its blobs are read, so no retention pass deletes them meanwhile; a
    # version whose blobs were deleted cannot be pinned, and the error says so.
    set_pin(store, chosen.version, pinned=True, why=f"exported to {out}")
    blobs = BlobStore(data_dir / "blobs")
    vector = torch.from_numpy(blobs.read_array(chosen.model_sha256, "<f4").copy())
    layout.write(model, vector)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out)
    return chosen.version

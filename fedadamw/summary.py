"""Per-run summaries of simulator records: final accuracy and rounds to a target."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedadamw.simulate import RoundRecord

__all__ = ["FINAL_WINDOW", "RunSummary", "format_table", "summarize"]

FINAL_WINDOW = 5  # final accuracy is the mean over this many last rounds


@dataclass(frozen=True)
class RunSummary:
    """One run (algorithm and learning rate).

    ``rounds_to`` maps a target accuracy to the first round reaching it, or None.
    ``final_accuracy`` is the mean test accuracy of the last ``FINAL_WINDOW`` rounds; a
    diverged run's is NaN.
    """

    algorithm: str
    lr: float
    rounds: int
    final_accuracy: float
    best_accuracy: float
    final_loss: float
    rounds_to: dict[float, int | None]
    diverged: bool


def summarize(
    records: Iterable[RoundRecord], *, targets: Sequence[float] = (0.8, 0.9)
) -> list[RunSummary]:
    """One summary per (algorithm, lr), in the order the runs first appear."""
    runs: dict[tuple[str, float], list[RoundRecord]] = {}
    for record in records:
        runs.setdefault((record.algorithm, record.lr), []).append(record)
    out = []
    for (algorithm, lr), rows in runs.items():
        trained = [r for r in rows if r.round > 0]
        diverged = any(r.diverged for r in rows)
        tail = trained[-FINAL_WINDOW:]
        final = math.nan if diverged or not tail else sum(r.test_accuracy for r in tail) / len(tail)
        reached = {
            target: next((r.round for r in trained if r.test_accuracy >= target), None)
            for target in targets
        }
        out.append(
            RunSummary(
                algorithm=algorithm,
                lr=lr,
                rounds=max((r.round for r in rows), default=0),
                final_accuracy=final,
                best_accuracy=max((r.test_accuracy for r in trained), default=math.nan),
                final_loss=trained[-1].test_loss if trained else math.nan,
                rounds_to=reached,
                diverged=diverged,
            )
        )
    return out


def format_table(summaries: Sequence[RunSummary]) -> str:
    """A plain-text table of summaries, one line per run."""
    targets = sorted({t for s in summaries for t in s.rounds_to})
    head = ["algorithm", "lr", "rounds", "final acc", "best acc", "test loss"]
    head += [f"to {t:.0%}" for t in targets]
    rows = [head]
    for s in summaries:
        rows.append(
            [
                s.algorithm,
                f"{s.lr:g}",
                str(s.rounds),
                "diverged" if s.diverged else f"{s.final_accuracy:.4f}",
                f"{s.best_accuracy:.4f}",
                f"{s.final_loss:.4f}",
                *(str(s.rounds_to[t]) if s.rounds_to.get(t) else "-" for t in targets),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )

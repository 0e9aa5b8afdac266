"""PNG plots of simulator records: test accuracy, and test and training loss, per round."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from fedadamw.simulate import RoundRecord

__all__ = ["plot_records"]


def plot_records(records: Iterable[RoundRecord], path: Path, *, title: str = "") -> None:
    """Write a two-panel PNG to ``path``: accuracy, and loss (test solid, training dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[tuple[str, float], list[RoundRecord]] = {}
    for record in records:
        runs.setdefault((record.algorithm, record.lr), []).append(record)
    several_lrs = len({lr for _, lr in runs}) > len({name for name, _ in runs})

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (name, lr), rows in runs.items():
        label = f"{name} (lr {lr:g})" if several_lrs else name
        rounds = [r.round for r in rows]
        line = acc_ax.plot(rounds, [r.test_accuracy for r in rows], label=label)[0]
        loss_ax.plot(rounds, [r.test_loss for r in rows], color=line.get_color(), label=label)
        trained = [r for r in rows if not math.isnan(r.train_loss)]
        loss_ax.plot(
            [r.round for r in trained],
            [r.train_loss for r in trained],
            color=line.get_color(),
            linestyle="--",
            alpha=0.6,
        )
    acc_ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
    loss_ax.set(xlabel="round", ylabel="loss (test solid, training dashed)", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

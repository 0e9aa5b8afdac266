"""Why the v̄ block mode matters: how block means distort steps, and how little K steps repair.

Two measurements, for ``digits-cnn`` and ``digits-vit`` (20 clients, 5 per round,
Dirichlet 0.1, K = 20, lr 3e-3, seed 0):

1. **Distortion.** Run ``fedadamw-full`` (which keeps every coordinate of v̄) and, at a few
   rounds, replace v̄ by its block means in ``tensor`` and ``head`` mode. A coordinate's
   normalised step m̂/√v̂ changes by the factor √(v_i / mean_block(v)) when its own v_i is
   replaced by its block's mean. The table gives quantiles of that factor over all
   coordinates, and the share of coordinates whose step grows or shrinks more than 4×.

2. **Repair within a round.** After K local steps from v = v̄, the share of v that comes from
   this round's own gradients is 1 − β2^K; the rest is still v̄. The table gives that share
   for several K and β2, and the final accuracy of ``fedadamw-tensor`` against
   ``fedadamw-full`` with β2 = 0.999 and with β2 = 0.99 (where a round of K = 20 steps
   rebuilds 18 % of v instead of 2 %).

    python -m tests.benchmarks.bench_second_moment [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

import torch

from fedadamw import BlockMode, BlockPartition, FlatLayout
from fedadamw.server import Hyperparameters, ServerState
from fedadamw.simulate import SimulationConfig, simulate
from fedadamw.summary import summarize
from fedadamw.tasks import load_task


def _capture_full_v(config: SimulationConfig, rounds: Sequence[int]) -> dict[int, torch.Tensor]:
    """The server's full v̄ after each round in ``rounds``, from a ``fedadamw-full`` run."""
    captured: dict[int, torch.Tensor] = {}

    def keep(algorithm: str, state: ServerState) -> None:
        if state.round in rounds:
            captured[state.round] = state.second_moment.clone()

    simulate(replace(config, algorithms=("fedadamw-full",), rounds=max(rounds)), on_state=keep)
    return captured


def _distortion(full_v: torch.Tensor, partition: BlockPartition) -> torch.Tensor:
    """√(v_i / block mean) for every coordinate i."""
    means = partition.expand(partition.reduce_flat(full_v))
    expanded = partition.layout.flatten(
        [m.expand(s.shape) for m, s in zip(means, partition.layout.specs, strict=True)],
        dtype=torch.float64,
    )
    return (full_v / expanded.clamp_min(1e-30)).sqrt()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CNN only, fewer rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tasks = ["digits-cnn"] if args.quick else ["digits-cnn", "digits-vit"]
    capture_rounds = [2, 5] if args.quick else [5, 20, 60]
    accuracy_rounds = 6 if args.quick else 60

    print("1. Step distortion from replacing v_i by its block mean: quantiles of √(v_i / mean)")
    print(
        f"{'task':11} {'round':>5} {'mode':7} {'blocks':>6} {'q10':>7} {'q50':>7} {'q90':>7} "
        f"{'>4x':>6} {'<1/4x':>6}"
    )
    for name in tasks:
        task = load_task(name)
        model = task.build_model(seed=0)
        layout = FlatLayout.from_model(model)
        base = SimulationConfig(
            task=name, clients=20, participation=0.25, dirichlet=0.1, lrs={"fedadamw-full": 3e-3}
        )
        for r, v in sorted(_capture_full_v(base, capture_rounds).items()):
            modes = [BlockMode.TENSOR] + ([BlockMode.HEAD] if task.head_blocks(model) else [])
            for mode in modes:
                part = BlockPartition.build(layout, mode, head_blocks=task.head_blocks(model))
                factor = _distortion(v, part)
                q = torch.quantile(factor.float(), torch.tensor([0.1, 0.5, 0.9]))
                grows = float((factor > 4).double().mean())  # v_i ≫ mean: step grows
                shrinks = float((factor < 0.25).double().mean())
                print(
                    f"{name:11} {r:5d} {mode.value:7} {part.num_blocks:6d} {q[0]:7.3f} {q[1]:7.3f} "
                    f"{q[2]:7.3f} {grows:6.1%} {shrinks:6.1%}"
                )

    print("\n2. Share of v rebuilt by one round's own gradients, 1 − β2^K")
    print(f"{'K':>5} " + " ".join(f"{'β2=' + str(b):>10}" for b in (0.999, 0.99, 0.95)))
    for k in (5, 20, 50, 200):
        print(f"{k:5d} " + " ".join(f"{1 - b**k:10.1%}" for b in (0.999, 0.99, 0.95)))

    print(
        f"\n   Final accuracy (mean of last 5 of {accuracy_rounds} rounds), "
        "Dirichlet 0.1, lr 3e-3, seed 0"
    )
    print(f"{'task':11} {'β2':>6} {'tensor':>8} {'full':>8}")
    for name in tasks:
        for beta2 in (0.999, 0.99):
            config = SimulationConfig(
                task=name,
                algorithms=("fedadamw-tensor", "fedadamw-full"),
                dirichlet=0.1,
                rounds=accuracy_rounds,
                lrs={"fedadamw-tensor": 3e-3, "fedadamw-full": 3e-3},
                hyper=Hyperparameters(betas=(0.9, beta2)),
            )
            finals = {s.algorithm: s.final_accuracy for s in summarize(simulate(config))}
            print(
                f"{name:11} {beta2:6g} "
                f"{finals['fedadamw-tensor']:8.4f} {finals['fedadamw-full']:8.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

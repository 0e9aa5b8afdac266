"""Why the v̄ block mode matters: how block means distort steps, and how little K steps repair.

Three measurements, for ``digits-cnn`` and ``digits-vit`` (20 clients, 5 per round,
Dirichlet 0.1, K = 20, lr 3e-3, seed 0):

1. **Distortion.** Run ``fedadamw-full`` (which keeps every coordinate of v̄) and, at a few
   rounds, replace v̄ by its block means in ``tensor`` and ``head`` mode. A coordinate's
   normalised step m̂/√v̂ changes by the factor √(v_i / mean_block(v)) when its own v_i is
   replaced by its block's mean. The table gives quantiles of that factor over all
   coordinates, and the share of coordinates whose step grows or shrinks more than 4×.

2. **Staleness.** From the same run's server state, one client trains a round twice: from
   the carried full v̄ (FedAdamW) and from v = 0 (v rebuilt from this round's gradients).
   The ratio of their bias-corrected v̂ says whether the history v̄ carries matches the
   client's gradients now.

3. **Repair within a round.** After K local steps from v = v̄, the share of v that comes from
   this round's own gradients is 1 − β2^K; the rest is still v̄. The table gives that share
   for several K and β2, and the final accuracy of ``fedadamw-tensor`` and
   ``fedadamw-full`` with β2 = 0.999 and with β2 = 0.99 (where a round of K = 20 steps
   rebuilds 18 % of v instead of 2 %), beside ``fedadamw-vreset`` (v rebuilt from the
   client's own gradients every round), all at lr 1e-3.

    python -m tests.benchmarks.bench_second_moment [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

import torch

from fedadamw import BlockMode, BlockPartition, FlatLayout, LocalTrainer, RoundPlan, get_algorithm
from fedadamw.server import Hyperparameters, ServerState
from fedadamw.simulate import SimulationConfig, simulate
from fedadamw.summary import summarize
from fedadamw.tasks import ClientDataSpec, load_task


def _capture(config: SimulationConfig, rounds: Sequence[int]) -> dict[int, ServerState]:
    """The server state after each round in ``rounds``, from a ``fedadamw-full`` run."""
    captured: dict[int, ServerState] = {}

    def keep(algorithm: str, state: ServerState) -> None:
        if state.round in rounds:
            captured[state.round] = state

    simulate(replace(config, algorithms=("fedadamw-full",), rounds=max(rounds)), on_state=keep)
    return captured


def _staleness(task_name: str, state: ServerState, *, lr: float, beta2: float) -> torch.Tensor:
    """(√v̂ carried + ε) / (√v̂ fresh + ε) per coordinate after one client's round from ``state``.

    The same client (partition 0 of 20, Dirichlet 0.1) trains K = 20 steps twice from the
    same model: once starting from the server's full v̄ with its t (FedAdamW), once from
    v = 0, t = 0 (v rebuilt from this round's own gradients). The factor is how much smaller
    (< 1) or larger (> 1) FedAdamW's normalised steps are than the fresh estimate's.
    """
    task = load_task(task_name)
    model = task.build_model(seed=0)
    layout = FlatLayout.from_model(model)
    partition = BlockPartition.build(layout, BlockMode.FULL)
    trainer = LocalTrainer(
        model=model,
        layout=layout,
        partition=partition,
        loss_fn=task.loss,
        device=torch.device("cpu"),
    )
    data = task.client_data(ClientDataSpec(partition=0, num_partitions=20, dirichlet=0.1, seed=0))
    hyper = Hyperparameters(betas=(0.9, beta2))
    k = 20
    out = []
    for moment, step in ((state.second_moment, state.global_step), (None, 0)):
        plan = RoundPlan(
            algorithm=get_algorithm("fedadamw-full"),
            model=state.model,
            global_update=state.global_update,
            second_moment=moment,
            global_step=step,
            lr=lr,
            local_steps=k,
            hyper=hyper,
        )
        v = trainer.train(plan, data.batches(batch_size=32, seed=1)).second_moment
        out.append((v / (1 - beta2 ** (step + k))).sqrt() + hyper.eps)
    carried, fresh = out
    return carried / fresh


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

    staleness: dict[str, dict[int, torch.Tensor]] = {}
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
        states = _capture(base, capture_rounds)
        staleness[name] = {
            r: _staleness(name, st, lr=3e-3, beta2=0.999) for r, st in states.items()
        }
        for r, state in sorted(states.items()):
            v = state.second_moment
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

    print(
        "\n2. Staleness of the carried v̄: step denominators (√v̂ + ε), carried over fresh, after "
        "one client's round of K = 20.\n   Above 1: FedAdamW steps that much smaller than a "
        "fresh v would; below 1: larger (past Adam's usual bound)."
    )
    print(
        f"{'task':11} {'round':>5} {'q10':>9} {'q50':>9} {'q90':>9} {'smaller>2x':>11} "
        f"{'larger>2x':>10}"
    )
    for name, by_round in staleness.items():
        for r, factor in sorted(by_round.items()):
            q = torch.quantile(factor.float(), torch.tensor([0.1, 0.5, 0.9]))
            above = float((factor > 2).double().mean())
            below = float((factor < 0.5).double().mean())
            print(
                f"{name:11} {r:5d} {q[0]:9.3g} {q[1]:9.3g} {q[2]:9.3g} {above:11.1%} {below:10.1%}"
            )

    print("\n3. Share of v rebuilt by one round's own gradients, 1 − β2^K")
    print(f"{'K':>5} " + " ".join(f"{'β2=' + str(b):>10}" for b in (0.999, 0.99, 0.95)))
    for k in (5, 20, 50, 200):
        print(f"{k:5d} " + " ".join(f"{1 - b**k:10.1%}" for b in (0.999, 0.99, 0.95)))

    print(
        f"\n   Final accuracy (mean of last 5 of {accuracy_rounds} rounds), Dirichlet 0.1, "
        "lr 1e-3, seed 0"
    )
    compared = ("fedadamw-tensor", "fedadamw-full", "fedadamw-vreset")
    print(f"{'task':11} {'β2':>6} " + " ".join(f"{name:>16}" for name in compared))
    for name in tasks:
        for beta2 in (0.999, 0.99):
            config = SimulationConfig(
                task=name,
                algorithms=compared,
                dirichlet=0.1,
                rounds=accuracy_rounds,
                lrs=dict.fromkeys(compared, 1e-3),
                hyper=Hyperparameters(betas=(0.9, beta2)),
            )
            finals = {s.algorithm: s.final_accuracy for s in summarize(simulate(config))}
            print(f"{name:11} {beta2:6g} " + " ".join(f"{finals[a]:16.4f}" for a in compared))
    return 0


if __name__ == "__main__":
    sys.exit(main())

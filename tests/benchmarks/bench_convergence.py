"""Convergence: rounds to 80 % and 90 % test accuracy, and final accuracy, per algorithm.

Setting (issue 2): 20 clients, 5 per round, Dirichlet 0.1 and 0.5, 60 rounds of K = 20
local steps, batch 32, on ``digits-cnn`` and ``digits-vit``; FedAdamW in each v̄ block mode,
the ablations α = 0 and v reset, FedAvg with AdamW and FedAvg with SGD.

Learning rates: every algorithm sweeps the same grid on seed 0; the rate with the best final
accuracy (mean test accuracy of the last 5 rounds) is then run on the other seeds, and the
report gives mean ± standard deviation over all seeds at that rate. The choice is made on
the test split that is also reported (there is no separate validation split), for every
algorithm alike.

Each run is cached as a CSV under ``--cache``, so an interrupted benchmark resumes and a
finished one re-reports at once. Runs go to ``--workers`` processes of one torch thread each.

    python -m tests.benchmarks.bench_convergence            # the full benchmark (hours)
    python -m tests.benchmarks.bench_convergence --quick    # a smoke run of a minute or two
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fedadamw.algorithms import get_algorithm
from fedadamw.plotting import plot_records
from fedadamw.simulate import RoundRecord, SimulationConfig, read_csv, simulate, write_csv
from fedadamw.summary import RunSummary, summarize

LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
ALGORITHMS = {
    "digits-cnn": (
        "fedadamw-tensor",
        "fedadamw-full",
        "fedadamw-alpha0",
        "fedadamw-vreset",
        "fedavg-adamw",
        "fedavg",
    ),
    "digits-vit": (
        "fedadamw-tensor",
        "fedadamw-head",
        "fedadamw-full",
        "fedadamw-alpha0",
        "fedadamw-vreset",
        "fedavg-adamw",
        "fedavg",
    ),
}


@dataclass(frozen=True)
class Job:
    task: str
    dirichlet: float
    seed: int
    algorithm: str
    lr: float
    rounds: int

    def path(self, cache: Path) -> Path:
        mode = get_algorithm(self.algorithm).block_mode
        tag = f"{self.algorithm}-{mode or 'none'}-lr{self.lr:g}"
        return (
            cache
            / self.task
            / f"dir{self.dirichlet:g}"
            / f"r{self.rounds}-s{self.seed}"
            / f"{tag}.csv"
        )

    def config(self) -> SimulationConfig:
        return SimulationConfig(
            task=self.task,
            algorithms=(self.algorithm,),
            clients=20,
            participation=0.25,
            dirichlet=self.dirichlet,
            rounds=self.rounds,
            local_steps=20,
            batch_size=32,
            lrs={self.algorithm: self.lr},
            seed=self.seed,
        )


def _run_job(args: tuple[Job, Path]) -> tuple[Job, float]:
    import torch

    torch.set_num_threads(1)
    job, cache = args
    started = time.perf_counter()
    records = simulate(job.config())
    write_csv(records, job.path(cache))
    return job, time.perf_counter() - started


def _run_all(jobs: Sequence[Job], cache: Path, workers: int) -> None:
    todo = [job for job in jobs if not job.path(cache).exists()]
    print(
        f"{len(jobs) - len(todo)} of {len(jobs)} runs cached; running {len(todo)}", file=sys.stderr
    )
    if not todo:
        return
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        for i, (job, seconds) in enumerate(
            pool.imap_unordered(_run_job, [(job, cache) for job in todo]), start=1
        ):
            elapsed = time.perf_counter() - started
            print(
                f"[{i}/{len(todo)} {elapsed:.0f}s] {job.task} dir{job.dirichlet:g} seed {job.seed} "
                f"{job.algorithm} lr {job.lr:g}: {seconds:.0f}s",
                file=sys.stderr,
                flush=True,
            )


def _summary(job: Job, cache: Path) -> RunSummary:
    return summarize(read_csv(job.path(cache)))[0]


def _score(summary: RunSummary) -> float:
    return -math.inf if math.isnan(summary.final_accuracy) else summary.final_accuracy


def _fmt_rounds(values: Sequence[int | None]) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return "never"
    text = f"{statistics.mean(reached):.1f}"
    return text if len(reached) == len(values) else f"{text} ({len(reached)}/{len(values)})"


def _mean_curve(runs: Sequence[list[RoundRecord]]) -> list[RoundRecord]:
    length = min(len(r) for r in runs)
    return [
        replace(
            runs[0][i],
            test_accuracy=statistics.mean(r[i].test_accuracy for r in runs),
            test_loss=statistics.mean(r[i].test_loss for r in runs),
            train_loss=statistics.mean(r[i].train_loss for r in runs),
        )
        for i in range(length)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="digits-cnn,digits-vit")
    parser.add_argument("--dirichlet", default="0.1,0.5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-convergence"))
    parser.add_argument(
        "--quick", action="store_true", help="1 task, 1 Dirichlet, 2 seeds, 8 rounds, 3 lrs"
    )
    args = parser.parse_args(argv)

    tasks = args.tasks.split(",")
    dirichlets = [float(a) for a in args.dirichlet.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    grid, rounds = LR_GRID, args.rounds
    if args.quick:
        tasks, dirichlets, seeds, grid, rounds = (
            ["digits-cnn"],
            [0.5],
            [0, 1],
            (1e-3, 3e-3, 1e-1),
            8,
        )

    sweep = [
        Job(task, alpha, seeds[0], algorithm, lr, rounds)
        for task in tasks
        for alpha in dirichlets
        for algorithm in ALGORITHMS[task]
        for lr in grid
    ]
    _run_all(sweep, args.cache, args.workers)
    best: dict[tuple[str, float, str], float] = {}
    for task in tasks:
        for alpha in dirichlets:
            for algorithm in ALGORITHMS[task]:
                candidates = [
                    j
                    for j in sweep
                    if (j.task, j.dirichlet, j.algorithm) == (task, alpha, algorithm)
                ]
                top = max(candidates, key=lambda j: _score(_summary(j, args.cache)))
                best[(task, alpha, algorithm)] = top.lr
    confirm = [
        Job(task, alpha, seed, algorithm, lr, rounds)
        for (task, alpha, algorithm), lr in best.items()
        for seed in seeds[1:]
    ]
    _run_all(confirm, args.cache, args.workers)

    lines = [
        f"Convergence: 20 clients, 5 per round, {rounds} rounds of K = 20, batch 32; "
        f"seeds {', '.join(map(str, seeds))}; lr grid {', '.join(f'{lr:g}' for lr in grid)} "
        f"swept on seed {seeds[0]}.",
        "",
    ]
    for task in tasks:
        for alpha in dirichlets:
            lines += [
                f"### {task}, Dirichlet {alpha:g}",
                "",
                "| algorithm | best lr | final accuracy (mean ± sd) "
                "| rounds to 80% | rounds to 90% |",
                "|---|---|---|---|---|",
            ]
            curves: list[RoundRecord] = []
            for algorithm in ALGORITHMS[task]:
                lr = best[(task, alpha, algorithm)]
                jobs = [Job(task, alpha, seed, algorithm, lr, rounds) for seed in seeds]
                summaries = [_summary(j, args.cache) for j in jobs]
                finals = [s.final_accuracy for s in summaries]
                spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
                lines.append(
                    f"| {algorithm} | {lr:g} | {statistics.mean(finals):.4f} ± {spread:.4f} | "
                    f"{_fmt_rounds([s.rounds_to[0.8] for s in summaries])} | "
                    f"{_fmt_rounds([s.rounds_to[0.9] for s in summaries])} |"
                )
                curves += _mean_curve([read_csv(j.path(args.cache)) for j in jobs])
            lines += ["", f"Final accuracy on seed {seeds[0]} across the lr grid:", ""]
            lines += ["| algorithm | " + " | ".join(f"{lr:g}" for lr in grid) + " |"]
            lines += ["|---|" + "---|" * len(grid)]
            for algorithm in ALGORITHMS[task]:
                cells = []
                for lr in grid:
                    s = _summary(Job(task, alpha, seeds[0], algorithm, lr, rounds), args.cache)
                    cells.append("div." if s.diverged else f"{s.final_accuracy:.3f}")
                lines.append(f"| {algorithm} | " + " | ".join(cells) + " |")
            lines.append("")
            png = args.cache / f"{task}-dir{alpha:g}-r{rounds}.png"
            plot_records(
                curves,
                png,
                title=f"{task}, Dirichlet {alpha:g}, mean of {len(seeds)} seeds at best lr",
            )
            lines += [f"Plot: `{png}`", ""]
    report = "\n".join(lines)
    (args.cache / f"report-r{rounds}.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

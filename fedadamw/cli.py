"""``fedadamw``: the user's tool.

fedadamw simulate ...   FedAdamW and its baselines in process, with a CSV and a plot
fedadamw plot CSV       re-plot a metrics.csv
fedadamw list           the tasks and algorithms there are

Other installed packages add commands through the ``fedadamw.commands`` entry points: each
names a function that takes the subcommand parsers and the help formatter and adds its own.
The demo (``fedadamw demo``, package ``demo``) is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fedadamw.algorithms import ALGORITHMS, get_algorithm
from fedadamw.errors import FedAdamWError, InvalidArgumentError
from fedadamw.plotting import plot_records
from fedadamw.progress import Progress
from fedadamw.server import Hyperparameters
from fedadamw.simulate import RoundRecord, SimulationConfig, read_csv, simulate, write_csv
from fedadamw.summary import format_table, summarize
from fedadamw.tasks import available_tasks, load_task

__all__ = ["default_out", "main"]


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        none = default is None or default is False or default in ("", argparse.SUPPRESS)
        if "default" in text or none:
            return text
        return super()._get_help_string(action) or text


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.run(args)
    except FedAdamWError as exc:
        print(f"fedadamw: error: {exc}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedadamw",
        description="FedAdamW: federated AdamW with secure aggregation. The user's tool.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    sim = commands.add_parser(
        "simulate",
        help="run FedAdamW and baselines in process",
        description=(
            "Run FedAdamW and its baselines over simulated clients in this process (no "
            "network, no secure aggregation). Every algorithm sees the same initial model, "
            "the same clients per round and the same batches. Writes metrics.csv (one row "
            "per algorithm and round), metrics.png and config.json to --out."
        ),
        formatter_class=_DefaultsHelp,
    )
    _simulation_flags(sim, SimulationConfig())
    sim.set_defaults(run=_simulate)

    plot = commands.add_parser(
        "plot", help="plot a metrics.csv", description="Plot a metrics.csv written by simulate."
    )
    plot.add_argument("csv", type=Path, help="the metrics.csv")
    plot.add_argument("--out", type=Path, default=None, help="the PNG (default: next to the CSV)")
    plot.set_defaults(run=_plot)

    for entry in sorted(
        importlib.metadata.entry_points(group="fedadamw.commands"), key=lambda e: e.name
    ):
        entry.load()(commands, _DefaultsHelp)

    listing = commands.add_parser(
        "list", help="list tasks and algorithms", description="List tasks and algorithms."
    )
    listing.set_defaults(run=_list)
    return parser


def _simulation_flags(parser: argparse.ArgumentParser, defaults: SimulationConfig) -> None:
    hyper = defaults.hyper
    parser.add_argument(
        "--task", default=defaults.task, help="task name or module:attr (see `fedadamw list`)"
    )
    parser.add_argument(
        "--algorithms",
        default=",".join(defaults.algorithms),
        help=f"comma-separated, from: {', '.join(ALGORITHMS)}",
    )
    parser.add_argument("--clients", type=int, default=defaults.clients, help="number of clients")
    parser.add_argument(
        "--participation",
        type=float,
        default=defaults.participation,
        help="fraction of clients per round",
    )
    parser.add_argument(
        "--dirichlet",
        type=float,
        default=defaults.dirichlet,
        help="Dirichlet alpha of the non-IID split",
    )
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds R")
    parser.add_argument(
        "--local-steps", type=int, default=defaults.local_steps, help="local steps K per round"
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="local batch size"
    )
    parser.add_argument(
        "--lr",
        default="",
        help=(
            "base learning rate η0, cosine-annealed over the rounds: one value for all, "
            "or per algorithm as NAME=VALUE pairs, e.g. 3e-3,fedavg=0.1 (default: each "
            "algorithm's own)"
        ),
    )
    parser.add_argument(
        "--alpha", type=float, default=hyper.alpha, help="FedAdamW correction weight α"
    )
    parser.add_argument(
        "--weight-decay", type=float, default=hyper.weight_decay, help="decoupled weight decay λ"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the data split, model and sampling"
    )
    parser.add_argument("--device", default=defaults.device, help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads; 0 keeps torch's default (small models often run best on 1)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: runs/simulate-TIME)"
    )


def parse_lrs(text: str, algorithms: Sequence[str]) -> dict[str, float]:
    """``"3e-3,fedavg=0.1"`` → a learning rate per named algorithm (bare values apply to all)."""
    lrs: dict[str, float] = {}
    overall: float | None = None
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.rpartition("=")
        try:
            lr = float(value)
        except ValueError as exc:
            raise InvalidArgumentError(f"--lr: {value!r} is not a number") from exc
        if sep:
            get_algorithm(name)
            lrs[name] = lr
        else:
            overall = lr
    if overall is not None:
        for name in algorithms:
            lrs.setdefault(name, overall)
    return lrs


def _config_from(args: argparse.Namespace) -> SimulationConfig:
    algorithms = tuple(filter(None, (a.strip() for a in args.algorithms.split(","))))
    for name in algorithms:
        get_algorithm(name)
    load_task(args.task)
    return SimulationConfig(
        task=args.task,
        algorithms=algorithms,
        clients=args.clients,
        participation=args.participation,
        dirichlet=args.dirichlet,
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        lrs=parse_lrs(args.lr, algorithms),
        seed=args.seed,
        hyper=Hyperparameters(alpha=args.alpha, weight_decay=args.weight_decay),
        device=args.device,
    )


def _simulate(args: argparse.Namespace) -> int:
    config = _config_from(args)
    if args.threads < 0:
        raise InvalidArgumentError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return _run(config, args.out or default_out("simulate"))


def default_out(kind: str) -> Path:
    """``runs/KIND-TIME``: where a command writes when given no ``--out``."""
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run(config: SimulationConfig, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(_jsonable(config), indent=2) + "\n")
    print(
        f"Simulating {', '.join(config.algorithms)} on {config.task}: {config.clients} clients, "
        f"{config.cohort} per round, Dirichlet {config.dirichlet}, {config.rounds} rounds of "
        f"{config.local_steps} local steps.",
        file=sys.stderr,
    )
    progress = Progress(len(config.algorithms) * config.rounds, label="simulate")
    records: list[RoundRecord] = []

    def on_round(record: RoundRecord) -> None:
        records.append(record)
        if record.round > 0:
            note = f"{record.algorithm} round {record.round}: accuracy {record.test_accuracy:.3f}"
            skipped = config.rounds - record.round if record.diverged else 0
            progress.advance(1 + skipped, note=note)

    csv_path, png_path = out / "metrics.csv", out / "metrics.png"
    try:
        simulate(config, on_round=on_round)
    except KeyboardInterrupt:
        write_csv(records, csv_path)
        print(f"\ninterrupted; the rounds finished so far are in {csv_path}", file=sys.stderr)
        return 130
    write_csv(records, csv_path)
    plot_records(records, png_path, title=f"{config.task}, Dirichlet {config.dirichlet}")
    print(format_table(summarize(records)))
    print(f"\nmetrics: {csv_path}\nplot:    {png_path}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    if not args.csv.is_file():
        raise InvalidArgumentError(f"{args.csv} does not exist")
    records = read_csv(args.csv)
    png = args.out or args.csv.with_suffix(".png")
    plot_records(records, png)
    print(png)
    return 0


def _list(args: argparse.Namespace) -> int:
    print("tasks:")
    for name in available_tasks():
        print(f"  {name:18} {load_task(name).description}")
    print("algorithms:")
    for algorithm in ALGORITHMS.values():
        print(f"  {algorithm.name:18} {algorithm.summary} (default lr {algorithm.default_lr:g})")
    return 0


def _jsonable(config: SimulationConfig) -> dict[str, object]:
    data = dataclasses.asdict(config)
    data["lrs"] = {a: config.lr_for(get_algorithm(a)) for a in config.algorithms}
    return data


if __name__ == "__main__":
    sys.exit(main())

"""``fedadamw demo``: the subcommand, added to ``fedadamw`` through its entry points."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``demo`` to ``fedadamw``'s subcommand parsers."""
    demo = commands.add_parser(
        "demo",
        help="a real deployment on loopback: coordinator, agents, secure rounds",
        description=(
            "Start a coordinator (SQLite, TLS) and edge agents as separate processes on "
            "loopback, enroll the agents, and run secure FedAdamW rounds on handwritten "
            "digits, each agent with its own non-IID share. Shows a live table, then a "
            "summary with round time by phase and a plot. Stops everything at the end or "
            "on Ctrl-C."
        ),
        formatter_class=formatter,
    )
    demo.add_argument("--task", default="digits-cnn", help="task name or module:attr")
    demo.add_argument("--clients", type=int, default=8, help="edge agents to start")
    demo.add_argument("--rounds", type=int, default=20, help="rounds to commit")
    demo.add_argument(
        "--drop-rate", type=float, default=0.0, help="chance that an agent is killed mid-round"
    )
    demo.add_argument("--dirichlet", type=float, default=0.5, help="the non-IID split's alpha")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data split and model")
    demo.add_argument(
        "--reference",
        action="store_true",
        help="also plot the same task simulated without secure aggregation",
    )
    demo.add_argument(
        "--data-dir", type=Path, default=None, help="keep the coordinator's data here"
    )
    demo.add_argument(
        "--out", type=Path, default=None, help="output directory (default: runs/demo-TIME)"
    )
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from demo.run import DemoConfig, run_demo
    from fedadamw.cli import default_out
    from fedadamw.tasks import load_task

    torch.set_num_threads(1)  # the reference simulation's model is tiny
    config = DemoConfig(
        task=args.task,
        clients=args.clients,
        rounds=args.rounds,
        drop_rate=args.drop_rate,
        dirichlet=args.dirichlet,
        seed=args.seed,
        out=args.out or default_out("demo"),
        data_dir=args.data_dir,
        reference=args.reference,
    )
    load_task(config.task)
    return run_demo(config)

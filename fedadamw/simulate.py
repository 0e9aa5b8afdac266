"""The in-process simulator: FedAdamW and its baselines over simulated clients, no network.

Each algorithm starts from the same initial model, sees the same clients selected in the
same rounds, and each selected client draws the same batches in a given round, so the
algorithms differ only in what they compute. Rounds follow docs/architecture.md, section 2: cosine
annealed η_r, K local steps, the mean update and mean second-moment block means applied by
the server rule.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from fedadamw.algorithms import Algorithm, get_algorithm
from fedadamw.blocks import BlockPartition
from fedadamw.client import LocalTrainer, RoundPlan
from fedadamw.errors import DivergedError, InvalidArgumentError
from fedadamw.layout import FlatLayout
from fedadamw.server import Hyperparameters, ServerState, cosine_lr, server_update
from fedadamw.tasks import ClientData, ClientDataSpec, Task, load_task

__all__ = [
    "RoundRecord",
    "SimulationConfig",
    "read_csv",
    "simulate",
    "write_csv",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationConfig:
    """One simulated comparison.

    ``lrs`` maps an algorithm name to its base learning rate η0; an algorithm missing from it
    uses its own default. ``participation`` is the fraction of clients selected per round
    (at least one).
    """

    task: str = "digits-cnn"
    algorithms: tuple[str, ...] = ("fedadamw", "fedavg-adamw", "fedavg")
    clients: int = 20
    participation: float = 0.25
    dirichlet: float = 0.5
    rounds: int = 60
    local_steps: int = 20
    batch_size: int = 32
    lrs: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    hyper: Hyperparameters = field(default_factory=Hyperparameters)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.algorithms:
            raise InvalidArgumentError("name at least one algorithm")
        for name in (*self.algorithms, *self.lrs):
            get_algorithm(name)
        if self.clients < 1 or self.rounds < 1 or self.local_steps < 1 or self.batch_size < 1:
            raise InvalidArgumentError("clients, rounds, local steps and batch size must be >= 1")
        if not 0 < self.participation <= 1:
            raise InvalidArgumentError(f"participation must be in (0, 1], got {self.participation}")
        if bad := {name: lr for name, lr in self.lrs.items() if not lr > 0}:
            raise InvalidArgumentError(f"learning rates must be > 0: {bad}")

    @property
    def cohort(self) -> int:
        return max(1, round(self.participation * self.clients))

    def lr_for(self, algorithm: Algorithm) -> float:
        return self.lrs.get(algorithm.name, algorithm.default_lr)


@dataclass(frozen=True)
class RoundRecord:
    """One algorithm after one round; round 0 is the initial model (no training loss).

    ``diverged`` marks the last record of a run stopped by a non-finite training loss.
    """

    algorithm: str
    lr: float
    round: int
    test_accuracy: float
    test_loss: float
    train_loss: float
    clients: int
    seconds: float
    diverged: bool = False


def simulate(
    config: SimulationConfig,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_state: Callable[[str, ServerState], None] | None = None,
) -> list[RoundRecord]:
    """Run every algorithm of ``config`` and return all their rounds' records, in order.

    ``on_round`` sees each record as it is made (for progress); ``on_state`` sees each
    algorithm's server state after every round (for analysis). A run whose local training
    diverges ends there with a record marked ``diverged``; the other runs go on.

    Raises:
        FedAdamWError: an unknown task or algorithm, or settings the task cannot meet.
    """
    task = load_task(config.task)
    device = torch.device(config.device)
    model = task.build_model(seed=config.seed)
    layout = FlatLayout.from_model(model)
    initial = layout.read(model)
    trainer = LocalTrainer(
        model=model, layout=layout, partition=None, loss_fn=task.loss, device=device
    )
    data = [
        task.client_data(
            ClientDataSpec(
                partition=i,
                num_partitions=config.clients,
                dirichlet=config.dirichlet,
                seed=config.seed,
            )
        )
        for i in range(config.clients)
    ]
    cohorts = _cohorts(config)
    records: list[RoundRecord] = []
    for name in config.algorithms:
        algorithm = get_algorithm(name)
        run = _run(
            config=config,
            algorithm=algorithm,
            task=task,
            trainer=trainer,
            initial=initial,
            data=data,
            cohorts=cohorts,
            on_state=on_state,
        )
        for record in run:
            records.append(record)
            if on_round is not None:
                on_round(record)
    return records


def _cohorts(config: SimulationConfig) -> list[list[int]]:
    rng = np.random.default_rng([config.seed, 1])
    return [
        sorted(int(i) for i in rng.choice(config.clients, size=config.cohort, replace=False))
        for _ in range(config.rounds)
    ]


def _batch_seed(seed: int, round_index: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0])


def _run(
    *,
    config: SimulationConfig,
    algorithm: Algorithm,
    task: Task,
    trainer: LocalTrainer,
    initial: torch.Tensor,
    data: Sequence[ClientData],
    cohorts: Sequence[Sequence[int]],
    on_state: Callable[[str, ServerState], None] | None,
) -> Iterable[RoundRecord]:
    layout = trainer.layout
    trainer.partition = (
        BlockPartition.build(
            layout, algorithm.block_mode, head_blocks=task.head_blocks(trainer.model)
        )
        if algorithm.block_mode is not None
        else None
    )
    num_blocks = trainer.partition.num_blocks if trainer.partition is not None else 0
    state = ServerState.initial(initial, num_blocks=num_blocks)
    base_lr = config.lr_for(algorithm)

    def record(
        round_index: int, train_loss: float, seconds: float, *, diverged: bool
    ) -> RoundRecord:
        layout.write(trainer.model, state.model.to(trainer.device))
        evaluation = task.evaluate(trainer.model, device=trainer.device)
        return RoundRecord(
            algorithm=algorithm.name,
            lr=base_lr,
            round=round_index,
            test_accuracy=math.nan
            if evaluation is None or evaluation.accuracy is None
            else evaluation.accuracy,
            test_loss=math.nan if evaluation is None else evaluation.loss,
            train_loss=train_loss,
            clients=len(cohorts[round_index - 1]) if round_index else 0,
            seconds=seconds,
            diverged=diverged,
        )

    yield record(0, math.nan, 0.0, diverged=False)
    for r, cohort in enumerate(cohorts):
        started = time.perf_counter()
        lr = cosine_lr(base_lr, r, config.rounds)
        plan = RoundPlan(
            algorithm=algorithm,
            model=state.model,
            global_update=state.global_update if state.round > 0 else None,
            second_moment=state.second_moment if state.round > 0 else None,
            global_step=state.global_step,
            lr=lr,
            local_steps=config.local_steps,
            hyper=config.hyper,
        )
        delta_sum = torch.zeros(layout.size, dtype=torch.float64)
        moment_sum = torch.zeros(num_blocks, dtype=torch.float64)
        losses = []
        try:
            for client in cohort:
                batches = data[client].batches(
                    batch_size=config.batch_size, seed=_batch_seed(config.seed, r, client)
                )
                update = trainer.train(plan, batches)
                delta_sum += update.delta
                if num_blocks:
                    moment_sum += update.second_moment
                losses.append(update.train_loss)
        except DivergedError as exc:
            log.warning("%s at lr %g diverged in round %d: %s", algorithm.name, base_lr, r + 1, exc)
            yield record(r + 1, math.nan, time.perf_counter() - started, diverged=True)
            return
        state = server_update(
            state,
            mean_delta=delta_sum / len(cohort),
            mean_second_moment=moment_sum / len(cohort) if num_blocks else None,
            local_steps=config.local_steps,
            lr=lr,
            server_lr=config.hyper.server_lr,
        )
        if on_state is not None:
            on_state(algorithm.name, state)
        yield record(r + 1, float(np.mean(losses)), time.perf_counter() - started, diverged=False)


_COLUMNS = [f.name for f in fields(RoundRecord)]


def write_csv(records: Iterable[RoundRecord], path: Path) -> None:
    """Write records as CSV with a header row: one row per algorithm and round."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_COLUMNS)
        for r in records:
            writer.writerow([getattr(r, column) for column in _COLUMNS])
    tmp.replace(path)


def read_csv(path: Path) -> list[RoundRecord]:
    """Records from a file that ``write_csv`` wrote.

    Raises:
        InvalidArgumentError: the file lacks a column or holds a value of the wrong type.
    """
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise InvalidArgumentError(f"{path} is not a metrics file: missing {sorted(missing)}")
        try:
            return [
                RoundRecord(
                    algorithm=row["algorithm"],
                    lr=float(row["lr"]),
                    round=int(row["round"]),
                    test_accuracy=float(row["test_accuracy"]),
                    test_loss=float(row["test_loss"]),
                    train_loss=float(row["train_loss"]),
                    clients=int(row["clients"]),
                    seconds=float(row["seconds"]),
                    diverged=row["diverged"] == "True",
                )
                for row in reader
            ]
        except ValueError as exc:
            raise InvalidArgumentError(f"{path}: {exc}") from exc

"""Local training on the device: the round's FedAdamW steps over this client's own data.

``LocalTraining`` is the update function a ``RoundSession`` calls. It builds the task's
model once, checks that the coordinator's model has the same flat layout, and runs
``fedadamw.LocalTrainer`` with the round's algorithm, hyperparameters, ΔG, v̄ and t on the
chosen device. It returns Δ, the block means of the final v (when the algorithm carries
them) and the client's weight (1: the server averages clients equally).

``warm_up`` runs one throwaway local step before the agent first checks in. PyTorch pays
its first-call costs (the autograd engine, kernel choice, the thread pool, a GPU's context)
on the first step, about a second on an idle CPU core and several on a busy one; paid after
selection, they made round 0 the slowest round for the whole cohort, which waits for its
last member. Training keeps no state between rounds (each writes the round's x into the
model and builds a new optimizer, and batches come from a seeded generator), so the
warm-up changes no round's result.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from edge_client.errors import EdgeError, ErrorCode
from edge_client.session import RoundInputs
from fedadamw.algorithms import get_algorithm
from fedadamw.blocks import BlockMode, BlockPartition
from fedadamw.client import LocalTrainer, RoundPlan
from fedadamw.errors import FedAdamWError
from fedadamw.layout import FlatLayout
from fedadamw.server import Hyperparameters
from fedadamw.tasks import ClientData, Task
from wire import Segment

__all__ = ["LocalTraining", "TrainingStoppedError", "select_device"]

log = logging.getLogger(__name__)


WARM_UP_BATCH = 32  # samples in the warm-up's one step


class TrainingStoppedError(EdgeError):
    """Training stopped because the agent is shutting down."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.STOPPED, message)


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU; ``cpu``, ``cuda``, ``cuda:i``.

    Raises ``EdgeError(INVALID_ARGUMENT)`` for CUDA on a machine without it, or a bad name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EdgeError(ErrorCode.INVALID_ARGUMENT, f"unknown device {name!r}: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EdgeError(
                ErrorCode.INVALID_ARGUMENT,
                f"device {name!r} asked for, but torch sees no CUDA GPU here; "
                "use --device cpu or auto",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EdgeError(
                ErrorCode.INVALID_ARGUMENT,
                f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)",
            )
    elif device.type != "cpu":
        raise EdgeError(
            ErrorCode.INVALID_ARGUMENT, f"device {name!r}: use auto, cpu, cuda or cuda:i"
        )
    return device


class LocalTraining:
    """The update function of this agent's rounds (see the module docstring)."""

    def __init__(
        self,
        *,
        task: Task,
        data: ClientData,
        device: torch.device,
        client_id: int,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        self.task = task
        self.data = data
        self.device = device
        self.client_id = client_id
        self.on_step = on_step
        self.stop = threading.Event()
        model = task.build_model(seed=0)
        self.layout = FlatLayout.from_model(model)
        self.head_blocks = task.head_blocks(model)
        self.trainer = LocalTrainer(
            model=model, layout=self.layout, partition=None, loss_fn=task.loss, device=device
        )

    def warm_up(self) -> float:
        """One local step of FedAdamW from the model's current x, thrown away (see the
        module docstring); the seconds it took. Progress and step counts are not told."""
        started = time.perf_counter()
        plan = RoundPlan(
            algorithm=get_algorithm("fedadamw"),
            model=self.layout.read(self.trainer.model).cpu(),  # its initial x, as built
            global_update=None,
            second_moment=None,
            global_step=0,
            lr=1e-3,
            local_steps=1,
            hyper=Hyperparameters(),
        )
        partition = self.trainer.partition
        self.trainer.partition = BlockPartition.build(
            self.layout, BlockMode.parse("tensor"), head_blocks=self.head_blocks
        )
        try:
            self.trainer.train(plan, self.data.batches(batch_size=WARM_UP_BATCH, seed=0))
        finally:
            self.trainer.partition = partition
        return time.perf_counter() - started

    def _step(self, done: int, total: int) -> None:
        if self.stop.is_set():
            raise TrainingStoppedError(f"stopped after {done} of {total} local steps")
        if self.on_step is not None:
            self.on_step(done, total)

    def __call__(self, inputs: RoundInputs) -> dict[str, np.ndarray]:
        config = inputs.config
        if config.layout_fingerprint != self.layout.fingerprint:
            raise EdgeError(
                ErrorCode.LIMIT,
                f"the coordinator trains another model (layout {config.layout_fingerprint[:12]}, "
                f"task {config.task!r}) than this agent's {self.task.name!r} "
                f"({self.layout.fingerprint[:12]})",
            )
        try:
            algorithm = get_algorithm(config.algorithm)
            partition = (
                BlockPartition.build(
                    self.layout, BlockMode.parse(config.block_mode), head_blocks=self.head_blocks
                )
                if config.block_mode
                else None
            )
            hyper = Hyperparameters(
                betas=(config.hyper.beta1, config.hyper.beta2),
                eps=config.hyper.eps,
                weight_decay=config.hyper.weight_decay,
                alpha=config.hyper.alpha,
                clip_norm=config.hyper.clip_norm or None,
            )
        except FedAdamWError as exc:
            raise EdgeError(ErrorCode.LIMIT, f"cannot run this round: {exc}") from exc
        if partition is not None and partition.num_blocks != inputs.second_moment.shape[0]:
            raise EdgeError(
                ErrorCode.LIMIT,
                f"the round's v̄ has {inputs.second_moment.shape[0]} blocks, this model "
                f"{partition.num_blocks} in mode {config.block_mode}",
            )
        first_round = config.model_version == 0
        plan = RoundPlan(
            algorithm=algorithm,
            model=torch.from_numpy(inputs.model.astype(np.float32)),
            global_update=None
            if first_round
            else torch.from_numpy(inputs.global_update.astype(np.float32)),
            second_moment=None
            if first_round or partition is None
            else torch.from_numpy(inputs.second_moment.astype(np.float64)),
            global_step=int(config.global_step),
            lr=config.hyper.lr,
            local_steps=config.local_steps,
            hyper=hyper,
        )
        self.trainer.partition = partition
        seed = int.from_bytes(
            hashlib.sha256(f"{config.round_id}:{self.client_id}".encode()).digest()[:8], "little"
        )
        started = time.perf_counter()
        update = self.trainer.train(
            plan, self.data.batches(batch_size=config.batch_size, seed=seed), on_step=self._step
        )
        log.info(
            "trained %d local steps on %s in %.1fs (mean loss %.4f, %d samples)",
            config.local_steps,
            self.device,
            time.perf_counter() - started,
            update.train_loss,
            update.num_samples,
        )
        out: dict[str, np.ndarray] = {
            Segment.DELTA: update.delta.numpy().astype(np.float64),
            Segment.WEIGHT: np.ones(1),
            # statistics the coordinator only ever sees summed over the round's clients
            Segment.SAMPLES: np.array([float(update.num_samples)]),
            Segment.TRAIN_LOSS: np.array([update.train_loss]),
        }
        if partition is not None:
            out[Segment.SECOND_MOMENT] = update.second_moment.numpy()
        return out

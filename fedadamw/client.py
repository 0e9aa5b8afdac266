"""One client's round: K local steps from the global model, and what it uploads.

``LocalTrainer`` is what both the simulator and the edge agent run. It takes a ``RoundPlan``
(the global state the server sent) and a stream of the client's own batches, trains K steps
on its device, and returns a ``ClientUpdate``: Δ_i = x_K − x^r and the block means of the
final v, both on the CPU, ready to be quantized and masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedadamw.algorithms import Algorithm, LocalOptimizer
from fedadamw.blocks import BlockPartition
from fedadamw.errors import DivergedError, InvalidArgumentError
from fedadamw.layout import FlatLayout
from fedadamw.optimizer import FedAdamW
from fedadamw.server import Hyperparameters
from fedadamw.tasks.base import Batch

__all__ = ["ClientUpdate", "LocalTrainer", "LossFn", "RoundPlan"]

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class RoundPlan:
    """What a client needs from the server to run round r.

    ``model`` is x^r (d,); ``global_update`` is ΔG_r (d,) or None for zero;
    ``second_moment`` is v̄^r (B block means) or None for zero; ``global_step`` is t_r.
    """

    algorithm: Algorithm
    model: Tensor
    global_update: Tensor | None
    second_moment: Tensor | None
    global_step: int
    lr: float
    local_steps: int
    hyper: Hyperparameters

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise InvalidArgumentError(f"local_steps must be >= 1, got {self.local_steps}")
        if not self.lr > 0:
            raise InvalidArgumentError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class ClientUpdate:
    """What one client uploads after a round.

    ``delta``: Δ_i (d,), the model's dtype, on the CPU. ``second_moment``: block means of the
    final v (B,), float64 on the CPU, empty when the algorithm carries no v̄.
    ``num_samples``: samples the client trained on, counted with repetition.
    ``train_loss``: the mean training loss over the K steps.
    """

    delta: Tensor
    second_moment: Tensor
    num_samples: int
    train_loss: float


class LocalTrainer:
    """Runs rounds for one client on one model instance, which it owns and reuses."""

    def __init__(
        self,
        *,
        model: nn.Module,
        layout: FlatLayout,
        partition: BlockPartition | None,
        loss_fn: LossFn,
        device: torch.device,
    ) -> None:
        layout.check(model)
        self.model = model.to(device)
        self.layout = layout
        self.partition = partition
        self.loss_fn = loss_fn
        self.device = device
        self._params = [p for p in self.model.parameters() if p.requires_grad]

    def train(
        self,
        plan: RoundPlan,
        batches: Iterator[Batch],
        *,
        on_step: Callable[[int, int], None] | None = None,
    ) -> ClientUpdate:
        """Run ``plan.local_steps`` steps on ``batches`` and return the update.

        ``on_step(done, total)`` is called after each step (for progress); an exception it
        raises stops the training and propagates.

        Raises:
            InvalidArgumentError: the plan needs a block partition this trainer lacks, or the
                batches run out before K steps.
            DivergedError: the mean training loss is not finite.
        """
        algorithm = plan.algorithm
        if algorithm.carries_second_moment and self.partition is None:
            raise InvalidArgumentError(f"{algorithm.name} needs a block partition of v")
        start = plan.model.to(self.device)
        self.layout.write(self.model, start)
        optimizer = self._optimizer(plan)
        self.model.train()
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        samples = 0
        for step in range(plan.local_steps):
            try:
                inputs, targets = next(batches)
            except StopIteration as exc:
                raise InvalidArgumentError(
                    f"the client's data ran out after {step} of {plan.local_steps} steps"
                ) from exc
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(inputs), targets)
            loss.backward()  # type: ignore[no-untyped-call]
            if plan.hyper.clip_norm is not None:
                nn.utils.clip_grad_norm_(self._params, plan.hyper.clip_norm, foreach=True)
            optimizer.step()
            total_loss += loss.detach()
            samples += int(targets.shape[0])
            if on_step is not None:
                on_step(step + 1, plan.local_steps)
        mean_loss = float(total_loss.item()) / plan.local_steps
        if not math.isfinite(mean_loss):
            raise DivergedError(
                f"training diverged: the mean loss is {mean_loss}; lower the learning rate"
            )
        delta = (self.layout.read(self.model) - start).cpu()
        if algorithm.carries_second_moment and isinstance(optimizer, FedAdamW):
            assert self.partition is not None
            second_moment = self.partition.reduce(optimizer.second_moment()).cpu()
        else:
            second_moment = torch.zeros(0, dtype=torch.float64)
        return ClientUpdate(
            delta=delta, second_moment=second_moment, num_samples=samples, train_loss=mean_loss
        )

    def _optimizer(self, plan: RoundPlan) -> torch.optim.Optimizer:
        algorithm, hyper = plan.algorithm, plan.hyper
        if algorithm.local_optimizer is LocalOptimizer.SGD:
            # Without momentum, L2 and decoupled weight decay coincide for SGD.
            return torch.optim.SGD(self._params, lr=plan.lr, weight_decay=hyper.weight_decay)
        optimizer = FedAdamW(
            self._params,
            lr=plan.lr,
            betas=hyper.betas,
            eps=hyper.eps,
            weight_decay=hyper.weight_decay,
            alpha=hyper.alpha if algorithm.use_correction else 0.0,
        )
        global_update = None
        if algorithm.use_correction and plan.global_update is not None:
            global_update = self.layout.unflatten(plan.global_update.to(self.device))
        if algorithm.carries_second_moment:
            assert self.partition is not None
            second_moment = (
                None
                if plan.second_moment is None
                else self.partition.expand(plan.second_moment.to(self.device))
            )
            optimizer.begin_round(
                global_update=global_update,
                second_moment=second_moment,
                global_step=plan.global_step,
            )
        else:
            optimizer.begin_round(global_update=global_update, global_step=0)
        return optimizer

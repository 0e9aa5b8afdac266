"""The task interface: the user's model and data, which the coordinator and agents share.

A task builds the model (the same initial weights for the same seed everywhere), gives a
client its own data, defines the loss and, optionally, evaluates a model on a held-out set.
The coordinator and every agent load the same task by name (``fedadamw.tasks.load_task``).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fedadamw.errors import InvalidArgumentError

__all__ = ["Batch", "ClientData", "ClientDataSpec", "Evaluation", "Task", "TensorClientData"]

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class ClientDataSpec:
    """Which data a client trains on.

    Built-in tasks split one data set: ``partition`` of ``num_partitions`` by a
    Dirichlet(``dirichlet``) draw from ``seed``. A user's task may read ``data_path`` instead.
    """

    partition: int = 0
    num_partitions: int = 1
    dirichlet: float = 0.5
    seed: int = 0
    data_path: Path | None = None

    def __post_init__(self) -> None:
        if self.num_partitions < 1 or not 0 <= self.partition < self.num_partitions:
            raise InvalidArgumentError(
                f"partition {self.partition} is not one of 0..{self.num_partitions - 1}"
            )
        if not self.dirichlet > 0:
            raise InvalidArgumentError(f"the Dirichlet alpha must be > 0, got {self.dirichlet}")

    @classmethod
    def parse_partition(cls, text: str, **kwargs: object) -> ClientDataSpec:
        """Build a spec from ``"i/N"`` (partition i of N, counted from 0)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError as exc:
            raise InvalidArgumentError(
                f"a partition is written i/N, for example 3/8; got {text!r}"
            ) from exc
        return cls(partition=index, num_partitions=count, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Evaluation:
    """A model's mean loss and accuracy (None if the task has no notion of it) on a held-out set."""

    loss: float
    accuracy: float | None
    num_samples: int


class ClientData(abc.ABC):
    """One client's local data."""

    @property
    @abc.abstractmethod
    def num_samples(self) -> int:
        """How many samples the client holds."""

    @abc.abstractmethod
    def batches(self, *, batch_size: int, seed: int) -> Iterator[Batch]:
        """An endless stream of (inputs, targets) batches, reshuffled every epoch from ``seed``."""


class TensorClientData(ClientData):
    """Data held in two tensors in memory: features (n, ...) and targets (n, ...)."""

    def __init__(self, features: Tensor, targets: Tensor) -> None:
        if features.shape[0] != targets.shape[0] or features.shape[0] == 0:
            raise InvalidArgumentError(
                f"features and targets must hold the same, nonzero number of samples; got "
                f"{features.shape[0]} and {targets.shape[0]}"
            )
        self.features = features
        self.targets = targets

    @property
    def num_samples(self) -> int:
        return int(self.features.shape[0])

    def batches(self, *, batch_size: int, seed: int) -> Iterator[Batch]:
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        size = min(batch_size, self.num_samples)
        while True:
            order = torch.randperm(self.num_samples, generator=generator)
            # Batches never straddle epochs; a short tail joins the next epoch's order.
            for start in range(0, self.num_samples - size + 1, size):
                index = order[start : start + size]
                yield self.features[index], self.targets[index]


class Task(abc.ABC):
    """A model and its data. Subclass it, then name it by entry point or ``module:attr``."""

    name: str = ""
    description: str = ""

    @abc.abstractmethod
    def build_model(self, *, seed: int) -> nn.Module:
        """A new model; the same seed gives the same weights on every machine."""

    @abc.abstractmethod
    def client_data(self, spec: ClientDataSpec) -> ClientData:
        """The data of the client that ``spec`` names."""

    @abc.abstractmethod
    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The scalar training loss of a batch."""

    def evaluate(self, model: nn.Module, *, device: torch.device) -> Evaluation | None:
        """Loss and accuracy on the task's held-out set, or None when it has none."""
        return None

    def head_blocks(self, model: nn.Module) -> Mapping[str, int]:
        """Parameter name → number of attention heads, for the ``head`` block mode of v̄."""
        return {}

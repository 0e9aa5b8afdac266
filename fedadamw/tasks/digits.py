"""The built-in tasks: scikit-learn's handwritten digits, which ship with the package.

``load_digits`` holds 1,797 8×8 images of the digits 0–9. A fixed, stratified 20 % of them
(seed 0) is the held-out test set the coordinator evaluates on; clients split the other 80 %
by a Dirichlet draw (``fedadamw.partition``). Pixels are scaled from 0..16 to 0..1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedadamw.errors import TaskError
from fedadamw.partition import dirichlet_partition
from fedadamw.tasks.base import ClientData, ClientDataSpec, Evaluation, Task, TensorClientData
from fedadamw.tasks.models import DigitsCNN, DigitsViT

__all__ = ["DigitsSplit", "DigitsTask", "digits_cnn", "digits_split", "digits_vit"]

TEST_FRACTION = 0.2
EVAL_BATCH = 512


@dataclass(frozen=True)
class DigitsSplit:
    """Images (n, 1, 8, 8) float32 in [0, 1] and labels (n,) int64, train and test."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@lru_cache(maxsize=1)
def digits_split() -> DigitsSplit:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise TaskError(
            "the digits tasks need scikit-learn: install 'fedadamw[agent]' on a device, "
            "'fedadamw[coordinator]' for the coordinator"
        ) from exc

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = data.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=0
    )
    return DigitsSplit(
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
    )


@lru_cache(maxsize=16)
def _partition(num_clients: int, alpha: float, seed: int) -> tuple[np.ndarray, ...]:
    labels = digits_split().train_y.numpy()
    return tuple(dirichlet_partition(labels, num_clients=num_clients, alpha=alpha, seed=seed))


class DigitsTask(Task):
    """Digit classification with cross-entropy, on a model built by ``factory``."""

    def __init__(self, name: str, factory: Callable[[], nn.Module], description: str) -> None:
        self.name = name
        self.description = description
        self._factory = factory

    def build_model(self, *, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._factory()

    def client_data(self, spec: ClientDataSpec) -> ClientData:
        if spec.data_path is not None:
            raise TaskError(
                f"task {self.name} splits scikit-learn's digits among clients: give it a "
                "partition (i/N, Dirichlet alpha, seed), not a data path"
            )
        split = digits_split()
        index = torch.from_numpy(
            _partition(spec.num_partitions, spec.dirichlet, spec.seed)[spec.partition]
        )
        return TensorClientData(split.train_x[index], split.train_y[index])

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, device: torch.device) -> Evaluation:
        split = digits_split()
        was_training = model.training
        model.eval()
        total_loss, correct = 0.0, 0
        for start in range(0, len(split.test_y), EVAL_BATCH):
            x = split.test_x[start : start + EVAL_BATCH].to(device)
            y = split.test_y[start : start + EVAL_BATCH].to(device)
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum").item())
            correct += int((logits.argmax(dim=1) == y).sum().item())
        model.train(was_training)
        n = len(split.test_y)
        return Evaluation(loss=total_loss / n, accuracy=correct / n, num_samples=n)

    def head_blocks(self, model: nn.Module) -> Mapping[str, int]:
        return model.head_blocks() if isinstance(model, DigitsViT) else {}


def digits_cnn() -> DigitsTask:
    return DigitsTask("digits-cnn", DigitsCNN, "8×8 digits, small CNN (38k parameters)")


def digits_vit() -> DigitsTask:
    return DigitsTask("digits-vit", DigitsViT, "8×8 digits, small Vision Transformer (69k)")

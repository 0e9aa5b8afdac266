"""The global model and its optimizer state, kept as blobs, and the server rule applied to them.

A model version is three blobs in the blob store, addressed by sha256:

- the model x: the flat layout's d values, little-endian float32;
- ΔG, the last global update direction: d values, little-endian float32;
- v̄, the second-moment block means: B values, little-endian float64 (B = 0 for algorithms
  that carry no v̄).

``ModelState`` builds version 0 from the task (the same seed gives the same model on every
machine), applies a round's decoded sums with ``fedadamw.server.server_update``, evaluates a
version on the task's held-out set, and exports one as a torch state dict.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from coordinator.blobs import BlobStore
from coordinator.domain import ModelVersion, RoundSums
from coordinator.errors import CoordinatorError, ErrorCode
from fedadamw.algorithms import Algorithm
from fedadamw.blocks import BlockPartition
from fedadamw.layout import FlatLayout
from fedadamw.server import ServerState, server_update
from fedadamw.tasks import Evaluation, Task

__all__ = ["ModelState", "RoundSums"]


class ModelState:
    """The task's model and the blobs of its versions."""

    def __init__(self, *, task: Task, algorithm: Algorithm, blobs: BlobStore, seed: int) -> None:
        self.task = task
        self.algorithm = algorithm
        self.blobs = blobs
        self.seed = seed
        self.model = task.build_model(seed=seed)
        self.layout = FlatLayout.from_model(self.model)
        self.partition = (
            BlockPartition.build(
                self.layout, algorithm.block_mode, head_blocks=task.head_blocks(self.model)
            )
            if algorithm.block_mode is not None
            else None
        )

    @property
    def num_blocks(self) -> int:
        return self.partition.num_blocks if self.partition is not None else 0

    @property
    def block_mode(self) -> str | None:
        return self.algorithm.block_mode.value if self.algorithm.block_mode is not None else None

    def initial_version(self, *, now: datetime) -> ModelVersion:
        """Version 0: the task's model for the configured seed, ΔG = 0, v̄ = 0, t = 0."""
        x = self.layout.read(self.model, dtype=torch.float32).numpy()
        return ModelVersion(
            version=0,
            created_at=now,
            model_sha256=self.blobs.put_array(x.astype("<f4")),
            global_update_sha256=self.blobs.put_array(np.zeros(self.layout.size, dtype="<f4")),
            second_moment_sha256=self.blobs.put_array(np.zeros(self.num_blocks, dtype="<f8")),
            global_step=0,
            layout_fingerprint=self.layout.fingerprint,
        )

    def check_compatible(self, version: ModelVersion) -> None:
        """Refuse a data directory whose models have another layout than this task's."""
        if version.layout_fingerprint != self.layout.fingerprint:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"the stored model versions were trained with another model (layout "
                f"{version.layout_fingerprint[:12]}, this task's is "
                f"{self.layout.fingerprint[:12]}): use the task and seed this data directory "
                "was created with, or a new data directory",
            )
        blocks = self.blobs.size(version.second_moment_sha256) // 8
        if blocks != self.num_blocks:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"the stored second moments have {blocks} blocks, algorithm "
                f"{self.algorithm.name} needs {self.num_blocks}: keep the algorithm this data "
                "directory was created with",
            )

    def load(self, version: ModelVersion) -> ServerState:
        """The server state of ``version``, from its blobs."""
        return ServerState(
            round=version.version,
            model=torch.from_numpy(self.blobs.read_array(version.model_sha256, "<f4").copy()),
            global_update=torch.from_numpy(
                self.blobs.read_array(version.global_update_sha256, "<f4").copy()
            ),
            second_moment=torch.from_numpy(
                self.blobs.read_array(version.second_moment_sha256, "<f8").copy()
            ),
            global_step=version.global_step,
        )

    def next_version(
        self,
        version: ModelVersion,
        sums: RoundSums,
        *,
        local_steps: int,
        lr: float,
        server_lr: float,
        round_id: str,
        now: datetime,
    ) -> ModelVersion:
        """Apply a round's sums to ``version`` (the server rule) and store the result's blobs."""
        state = self.load(version)
        count = sums.survivors
        mean_delta = torch.from_numpy(sums.delta / count)
        mean_moment = (
            torch.from_numpy(sums.second_moment / count)
            if sums.second_moment is not None and self.num_blocks
            else None
        )
        new = server_update(
            state,
            mean_delta=mean_delta,
            mean_second_moment=mean_moment,
            local_steps=local_steps,
            lr=lr,
            server_lr=server_lr,
        )
        return ModelVersion(
            version=version.version + 1,
            created_at=now,
            model_sha256=self.blobs.put_array(new.model.numpy().astype("<f4")),
            global_update_sha256=self.blobs.put_array(new.global_update.numpy().astype("<f4")),
            second_moment_sha256=self.blobs.put_array(new.second_moment.numpy().astype("<f8")),
            global_step=new.global_step,
            layout_fingerprint=self.layout.fingerprint,
            round_id=round_id,
            num_clients=count,
        )

    def evaluate(self, version: ModelVersion) -> Evaluation | None:
        """The task's held-out evaluation of ``version`` (None if the task has none)."""
        self.layout.write(
            self.model, torch.from_numpy(self.blobs.read_array(version.model_sha256, "<f4").copy())
        )
        return self.task.evaluate(self.model, device=torch.device("cpu"))

    def export(self, version: ModelVersion, path: Path) -> None:
        """Write ``version`` as a torch state dict (``torch.load`` + ``load_state_dict``)."""
        self.layout.write(
            self.model, torch.from_numpy(self.blobs.read_array(version.model_sha256, "<f4").copy())
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.model.state_dict(), tmp)
        tmp.replace(path)

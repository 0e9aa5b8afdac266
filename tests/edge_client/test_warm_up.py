"""The agent's warm-up step before its first check-in changes no round's result.

``LocalTraining.warm_up`` runs one throwaway FedAdamW step so that PyTorch's first-call
costs are paid before selection (edge_client/training.py). Real training of the digits CNN
on its own data, on the CPU: a warmed-up agent and a cold one compute the same round's
update bit for bit, and the warm-up tells no step to the progress callback.
"""

from __future__ import annotations

import numpy as np
import torch

from edge_client.session import RoundInputs
from edge_client.training import LocalTraining
from fedadamw.blocks import BlockMode, BlockPartition
from fedadamw.tasks import ClientDataSpec, load_task
from wire import Segment
from wire.v1 import edge_pb2 as pb


def _training(steps: list[tuple[int, int]]) -> LocalTraining:
    task = load_task("digits-cnn")
    return LocalTraining(
        task=task,
        data=task.client_data(ClientDataSpec.parse_partition("1/4", seed=3)),
        device=torch.device("cpu"),
        client_id=7,
        on_step=lambda done, total: steps.append((done, total)),
    )


def _inputs(training: LocalTraining, *, model_version: int) -> RoundInputs:
    model = training.layout.read(training.task.build_model(seed=5)).numpy()
    blocks = BlockPartition.build(
        training.layout, BlockMode.parse("tensor"), head_blocks=training.head_blocks
    ).num_blocks
    rng = np.random.default_rng(11)
    config = pb.RoundConfig(
        round_id="warm-up-test",
        model_version=model_version,
        task="digits-cnn",
        algorithm="fedadamw",
        layout_fingerprint=training.layout.fingerprint,
        block_mode="tensor",
        hyper=pb.Hyperparameters(
            lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, alpha=0.5
        ),
        local_steps=3,
        global_step=40,
        batch_size=16,
    )
    return RoundInputs(
        config=config,
        model=model,
        global_update=(rng.standard_normal(model.shape) * 1e-3).astype(np.float32),
        second_moment=np.abs(rng.standard_normal(blocks)) * 1e-4,
    )


def test_a_warmed_up_agent_computes_the_same_update_as_a_cold_one() -> None:
    cold_steps: list[tuple[int, int]] = []
    warm_steps: list[tuple[int, int]] = []
    cold, warm = _training(cold_steps), _training(warm_steps)
    assert warm.warm_up() > 0
    assert warm_steps == []  # the warm-up is not a round's step
    for version in (0, 3):  # the first round (no ΔG, no v̄) and a later one
        expected = cold(_inputs(cold, model_version=version))
        got = warm(_inputs(warm, model_version=version))
        assert set(got) == set(expected)
        for segment in (Segment.DELTA, Segment.SECOND_MOMENT, Segment.TRAIN_LOSS):
            np.testing.assert_array_equal(got[segment], expected[segment])
        assert np.any(got[Segment.DELTA] != 0)
    assert warm_steps == cold_steps == [(1, 3), (2, 3), (3, 3)] * 2

"""One client's round: LocalTrainer against a hand-run FedAdamW."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from fedadamw import (
    BlockMode,
    BlockPartition,
    FedAdamW,
    FlatLayout,
    Hyperparameters,
    LocalTrainer,
    RoundPlan,
    get_algorithm,
)
from fedadamw.errors import DivergedError, InvalidArgumentError, LayoutMismatchError
from fedadamw.tasks import ClientDataSpec, load_task

TASK = load_task("digits-cnn")
DATA = TASK.client_data(ClientDataSpec(partition=1, num_partitions=4, dirichlet=0.5, seed=0))
HYPER = Hyperparameters()


def _setup(mode: BlockMode | None) -> tuple[nn.Module, FlatLayout, BlockPartition | None]:
    model = TASK.build_model(seed=0)
    layout = FlatLayout.from_model(model)
    part = BlockPartition.build(layout, mode) if mode is not None else None
    return model, layout, part


def _plan(name: str, layout: FlatLayout, part: BlockPartition | None, **kw: object) -> RoundPlan:
    gen = torch.Generator().manual_seed(3)
    x0 = TASK.build_model(seed=0)
    args: dict[str, object] = {
        "algorithm": get_algorithm(name),
        "model": layout.read(x0),
        "global_update": torch.randn(layout.size, generator=gen) * 1e-3,
        "second_moment": (
            torch.rand(part.num_blocks, generator=gen, dtype=torch.float64) * 1e-4
            if part is not None
            else None
        ),
        "global_step": 40,
        "lr": 3e-3,
        "local_steps": 6,
        "hyper": HYPER,
    }
    args.update(kw)
    return RoundPlan(**args)  # type: ignore[arg-type]


def test_fedadamw_round_matches_a_hand_run_optimizer() -> None:
    model, layout, part = _setup(BlockMode.TENSOR)
    assert part is not None
    plan = _plan("fedadamw-tensor", layout, part)
    trainer = LocalTrainer(
        model=model, layout=layout, partition=part, loss_fn=TASK.loss, device=torch.device("cpu")
    )
    update = trainer.train(plan, DATA.batches(batch_size=16, seed=9))

    ref = copy.deepcopy(TASK.build_model(seed=0))
    params = list(ref.parameters())
    opt = FedAdamW(params, lr=plan.lr, alpha=HYPER.alpha, weight_decay=HYPER.weight_decay)
    assert plan.global_update is not None
    assert plan.second_moment is not None
    opt.begin_round(
        global_update=layout.unflatten(plan.global_update),
        second_moment=part.expand(plan.second_moment),
        global_step=plan.global_step,
    )
    for x, y in itertools.islice(DATA.batches(batch_size=16, seed=9), plan.local_steps):
        opt.zero_grad()
        TASK.loss(ref(x), y).backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
    torch.testing.assert_close(update.delta, layout.read(ref) - plan.model)
    torch.testing.assert_close(update.second_moment, part.reduce(opt.second_moment()))
    assert update.second_moment.shape == (part.num_blocks,)
    assert bool((update.second_moment >= 0).all())
    assert update.num_samples == 6 * 16
    assert update.train_loss > 0


def test_vreset_ignores_the_servers_second_moment_and_step() -> None:
    model, layout, _ = _setup(None)
    trainer = LocalTrainer(
        model=model, layout=layout, partition=None, loss_fn=TASK.loss, device=torch.device("cpu")
    )
    plan = _plan("fedadamw-vreset", layout, None, second_moment=torch.ones(3, dtype=torch.float64))
    a = trainer.train(plan, DATA.batches(batch_size=16, seed=1))
    b = trainer.train(
        _plan("fedadamw-vreset", layout, None, second_moment=None, global_step=0),
        DATA.batches(batch_size=16, seed=1),
    )
    assert torch.equal(a.delta, b.delta)
    assert a.second_moment.numel() == 0


@pytest.mark.parametrize(
    ("name", "mode"), [("fedavg", None), ("fedavg-adamw", None), ("fedadamw-full", BlockMode.FULL)]
)
def test_what_each_algorithm_uploads(name: str, mode: BlockMode | None) -> None:
    model, layout, part = _setup(mode)
    trainer = LocalTrainer(
        model=model, layout=layout, partition=part, loss_fn=TASK.loss, device=torch.device("cpu")
    )
    update = trainer.train(_plan(name, layout, part), DATA.batches(batch_size=8, seed=0))
    assert update.delta.shape == (layout.size,)
    assert bool(update.delta.abs().sum() > 0)
    assert update.second_moment.numel() == (layout.size if mode is BlockMode.FULL else 0)


def test_fedavg_adamw_is_the_same_every_round() -> None:
    """State reset: the server's ΔG, v̄ and t change nothing."""
    model, layout, _ = _setup(None)
    trainer = LocalTrainer(
        model=model, layout=layout, partition=None, loss_fn=TASK.loss, device=torch.device("cpu")
    )
    a = trainer.train(_plan("fedavg-adamw", layout, None), DATA.batches(batch_size=8, seed=0))
    b = trainer.train(
        _plan("fedavg-adamw", layout, None, global_update=None, global_step=0),
        DATA.batches(batch_size=8, seed=0),
    )
    assert torch.equal(a.delta, b.delta)


def test_errors_say_what_went_wrong() -> None:
    model, layout, part = _setup(BlockMode.TENSOR)
    with pytest.raises(LayoutMismatchError):
        LocalTrainer(
            model=nn.Linear(2, 2),
            layout=layout,
            partition=part,
            loss_fn=TASK.loss,
            device=torch.device("cpu"),
        )
    trainer = LocalTrainer(
        model=model, layout=layout, partition=None, loss_fn=TASK.loss, device=torch.device("cpu")
    )
    with pytest.raises(InvalidArgumentError, match="needs a block partition"):
        trainer.train(_plan("fedadamw-tensor", layout, part), DATA.batches(batch_size=8, seed=0))
    with pytest.raises(InvalidArgumentError, match="ran out after 2 of 6 steps"):
        trainer.train(
            _plan("fedavg", layout, None), itertools.islice(DATA.batches(batch_size=8, seed=0), 2)
        )
    with pytest.raises(DivergedError, match="lower the learning rate"):
        trainer.train(_plan("fedavg", layout, None, lr=1e6), DATA.batches(batch_size=8, seed=0))
    with pytest.raises(InvalidArgumentError, match="local_steps"):
        _plan("fedavg", layout, None, local_steps=0)

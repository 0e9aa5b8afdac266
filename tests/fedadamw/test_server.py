"""The server rule and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from fedadamw import ServerState, cosine_lr, server_update
from fedadamw.errors import InvalidArgumentError


def _state() -> ServerState:
    return ServerState.initial(torch.tensor([1.0, 2.0, 3.0]), num_blocks=2)


def test_initial_state_is_plain_adamw() -> None:
    state = _state()
    assert state.round == 0
    assert state.global_step == 0
    assert torch.count_nonzero(state.global_update) == 0
    assert state.second_moment.shape == (2,)
    assert torch.count_nonzero(state.second_moment) == 0


def test_one_round_follows_the_design() -> None:
    delta = torch.tensor([0.2, -0.4, 0.0])
    v = torch.tensor([1e-4, 3e-6], dtype=torch.float64)
    nxt = server_update(_state(), mean_delta=delta, mean_second_moment=v, local_steps=4, lr=0.1)
    torch.testing.assert_close(nxt.model, torch.tensor([1.2, 1.6, 3.0]))
    torch.testing.assert_close(nxt.global_update, -delta / (4 * 0.1))
    torch.testing.assert_close(nxt.second_moment, v)
    assert (nxt.round, nxt.global_step) == (1, 4)
    again = server_update(nxt, mean_delta=delta, mean_second_moment=None, local_steps=4, lr=0.05)
    assert (again.round, again.global_step) == (2, 8)
    torch.testing.assert_close(again.second_moment, v)  # None keeps v̄
    torch.testing.assert_close(again.global_update, -delta / (4 * 0.05))


def test_server_learning_rate_scales_the_model_step_only() -> None:
    delta = torch.tensor([1.0, 1.0, 1.0])
    nxt = server_update(
        _state(), mean_delta=delta, mean_second_moment=None, local_steps=2, lr=0.5, server_lr=0.5
    )
    torch.testing.assert_close(nxt.model, torch.tensor([1.5, 2.5, 3.5]))
    torch.testing.assert_close(nxt.global_update, -delta)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean_delta": torch.zeros(2)}, "mean delta has shape"),
        ({"mean_second_moment": torch.zeros(3)}, "mean second moment has shape"),
        ({"local_steps": 0}, "local_steps"),
        ({"lr": 0.0}, "lr > 0"),
        ({"mean_delta": torch.tensor([0.0, math.nan, 0.0])}, "NaN"),
    ],
)
def test_rejects_bad_rounds(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "mean_delta": torch.zeros(3),
        "mean_second_moment": None,
        "local_steps": 2,
        "lr": 0.1,
    }
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError, match=message):
        server_update(_state(), **args)  # type: ignore[arg-type]


def test_cosine_schedule() -> None:
    assert cosine_lr(0.1, 0, 10) == pytest.approx(0.1)
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)
    assert cosine_lr(0.1, 9, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))
    assert all(cosine_lr(1.0, r, 7) > cosine_lr(1.0, r + 1, 7) > 0 for r in range(6))
    with pytest.raises(InvalidArgumentError, match="outside"):
        cosine_lr(0.1, 10, 10)

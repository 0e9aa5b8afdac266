"""The FedAdamW server rule and the per-round learning-rate schedule.

Over the S clients that survived round r (docs/architecture.md, section 2)::

    Δ̄        = (1/S) Σ Δ_i               # secure aggregation yields the sum
    x^{r+1}  = x^r + η_g·Δ̄               # server learning rate η_g, default 1
    ΔG_{r+1} = −Δ̄ / (K·η_r)              # the global update direction; ΔG_0 = 0
    v̄^{r+1}  = (1/S) Σ v̄_i               # block means
    t       += K

The rule takes the means, not the sums: the caller divides by S (the securely summed count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fedadamw.errors import InvalidArgumentError

__all__ = ["Hyperparameters", "ServerState", "cosine_lr", "server_update"]


@dataclass(frozen=True)
class Hyperparameters:
    """FedAdamW's hyperparameters besides the learning rate (docs/architecture.md, section 2).

    ``clip_norm`` bounds each local gradient's global L2 norm (None: no clipping);
    ``server_lr`` scales the averaged update applied to the global model.
    """

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    alpha: float = 0.5
    clip_norm: float | None = 10.0
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise InvalidArgumentError(f"betas must lie in [0, 1), got {self.betas}")
        if self.eps < 0 or self.weight_decay < 0:
            raise InvalidArgumentError("eps and weight_decay must be >= 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise InvalidArgumentError(f"clip_norm must be > 0 or None, got {self.clip_norm}")
        if not self.server_lr > 0:
            raise InvalidArgumentError(f"server_lr must be > 0, got {self.server_lr}")


def cosine_lr(base_lr: float, round_index: int, total_rounds: int) -> float:
    """η_r = ½·η0·(1 + cos(π·r/R)) for round r of R (r counts from 0), constant in a round."""
    if total_rounds < 1 or not 0 <= round_index < total_rounds:
        raise InvalidArgumentError(
            f"round {round_index} is outside a schedule of {total_rounds} rounds"
        )
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * round_index / total_rounds))


@dataclass(frozen=True)
class ServerState:
    """The global state before round ``round``: x^r, ΔG_r, v̄^r and t_r.

    ``model`` and ``global_update`` are flat vectors of the layout (d values, the model's
    dtype); ``second_moment`` holds the B block means in float64.
    """

    round: int
    model: Tensor
    global_update: Tensor
    second_moment: Tensor
    global_step: int

    @classmethod
    def initial(cls, model: Tensor, *, num_blocks: int) -> ServerState:
        """Round 0: plain AdamW (ΔG = 0, v̄ = 0, t = 0)."""
        return cls(
            round=0,
            model=model.detach().clone(),
            global_update=torch.zeros_like(model),
            second_moment=torch.zeros(num_blocks, dtype=torch.float64),
            global_step=0,
        )


def server_update(
    state: ServerState,
    *,
    mean_delta: Tensor,
    mean_second_moment: Tensor | None,
    local_steps: int,
    lr: float,
    server_lr: float = 1.0,
) -> ServerState:
    """Apply one round's means and return the state before the next round.

    Args:
        mean_delta: Δ̄, (d,), any float dtype; added in float64.
        mean_second_moment: the mean of the clients' block means, (B,); None keeps v̄ as it
            is (algorithms that do not carry v).
        local_steps: K, the local steps each client took.
        lr: η_r, the clients' learning rate in this round (> 0).
        server_lr: η_g.

    Raises:
        InvalidArgumentError: a wrong shape, a non-finite update, K < 1 or lr <= 0.
    """
    if mean_delta.shape != state.model.shape:
        raise InvalidArgumentError(
            f"mean delta has shape {tuple(mean_delta.shape)}, the model {tuple(state.model.shape)}"
        )
    if mean_second_moment is not None and mean_second_moment.shape != state.second_moment.shape:
        raise InvalidArgumentError(
            f"mean second moment has shape {tuple(mean_second_moment.shape)}, "
            f"expected {tuple(state.second_moment.shape)}"
        )
    if local_steps < 1 or not lr > 0:
        raise InvalidArgumentError(f"need local_steps >= 1 and lr > 0, got {local_steps}, {lr}")
    delta = mean_delta.detach().to(torch.float64)
    if not bool(torch.isfinite(delta).all()):
        raise InvalidArgumentError("the mean update holds NaN or infinite values")
    model = (state.model.to(torch.float64) + server_lr * delta).to(state.model.dtype)
    global_update = (delta / -(local_steps * lr)).to(state.model.dtype)
    second_moment = (
        state.second_moment
        if mean_second_moment is None
        else mean_second_moment.detach().to(torch.float64).clamp_min(0.0)
    )
    return replace(
        state,
        round=state.round + 1,
        model=model,
        global_update=global_update,
        second_moment=second_moment,
        global_step=state.global_step + local_steps,
    )

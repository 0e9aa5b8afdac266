"""The FedAdamW client optimizer.

Client i, round r (docs/architecture.md, section 2). ``begin_round`` starts it from the server's
state: m ← 0, v ← v̄ (full tensors or block means), the correction direction ΔG and the number
of steps t taken before this round. The k-th ``step()`` of the round then does::

    m  = β1·m + (1−β1)·g
    v  = β2·v + (1−β2)·g²
    m̂  = m / (1 − β1^k)            # local k: m restarts every round
    v̂  = v / (1 − β2^(t+k))        # global step: v carries over between rounds
    x  = x − lr·( m̂/(√v̂ + ε) + α·ΔG + λ·x )

Without ``begin_round`` the optimizer is ``torch.optim.AdamW`` (foreach, no amsgrad), bit for
bit: t = 0, ΔG = 0, v starts at zero, and the operations run in AdamW's order.

The updates use torch's multi-tensor ``_foreach_*`` kernels, grouped by device and dtype. In
a round two rewrites keep a step as cheap as AdamW's, though they round differently in the
last bit. The correction and the weight decay share one pass over x: ΔG is constant within a
round, so ``begin_round`` stores y = −(α/λ)·ΔG and each step does
``x ← lerp(x, y, lr·λ) = x·(1 − lr·λ) − lr·α·ΔG``. And the bias correction of v moves into
the step size, which saves a pass: m̂/(√v̂ + ε) = b·m̂/(√v + ε·b) with b = √(1 − β2^(t+k)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from fedadamw.errors import InvalidArgumentError

__all__ = ["FedAdamW"]

# Per-group keys that persist in ``state_dict()``.
_ROUND_STEP = "round_step"  # k: steps taken in this round
_GLOBAL_STEP = "global_step"  # t: steps taken before this round
_IN_ROUND = "in_round"  # begin_round was called
# Per-parameter state keys.
_EXP_AVG = "exp_avg"
_EXP_AVG_SQ = "exp_avg_sq"
_CORRECTION = "correction"  # the stored correction tensor, see the module docstring
_CORRECTION_KEY = "correction_key"  # (alpha, weight_decay) the correction was scaled for
_GLOBAL_UPDATE = "global_update"  # ΔG itself, kept to rescale on a change of alpha or λ


class FedAdamW(torch.optim.Optimizer):
    """AdamW with FedAdamW's round structure.

    Args:
        params: the parameters, or parameter groups, as for any torch optimizer.
        lr: the learning rate η (constant within a round; the caller anneals it per round).
        betas: (β1, β2).
        eps: ε, added to √v̂.
        weight_decay: λ, decoupled: x ← x − lr·λ·x.
        alpha: α, the weight of the correction toward the last global update ΔG.

    Raises:
        InvalidArgumentError: a hyperparameter out of range, or a sparse gradient at ``step``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        alpha: float = 0.5,
    ) -> None:
        _check_hyperparameters(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, alpha=alpha)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "alpha": alpha,
            _ROUND_STEP: 0,
            _GLOBAL_STEP: 0,
            _IN_ROUND: False,
        }
        super().__init__(params, defaults)

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def begin_round(
        self,
        *,
        global_update: Sequence[Tensor] | None = None,
        second_moment: Sequence[Tensor] | None = None,
        global_step: int = 0,
    ) -> None:
        """Start a round: m ← 0, k ← 0, v ← v̄, ΔG ← ``global_update``, t ← ``global_step``.

        Args:
            global_update: ΔG, one tensor per parameter (in the order of ``param_groups``)
                with that parameter's shape; ``None`` means zero.
            second_moment: v̄, one tensor per parameter: either of that parameter's shape, or
                0-dim (a block mean that fills the whole tensor); ``None`` means zero.
            global_step: t, the number of local steps taken before this round (≥ 0). With a
                nonzero v̄ it should be the server's t, so that v̂'s bias correction matches
                how much history v̄ holds.

        Raises:
            InvalidArgumentError: a list of the wrong length, a tensor of the wrong shape,
                a negative second moment or a negative ``global_step``.
        """
        params = self._params()
        if global_step < 0:
            raise InvalidArgumentError(f"global_step must be >= 0, got {global_step}")
        _check_per_param("global_update", global_update, params, allow_scalar=False)
        _check_per_param("second_moment", second_moment, params, allow_scalar=True)
        index = 0
        for group in self.param_groups:
            group[_ROUND_STEP] = 0
            group[_GLOBAL_STEP] = global_step
            group[_IN_ROUND] = True
            for p in group["params"]:
                state = self.state[p]
                state[_EXP_AVG] = torch.zeros_like(p, memory_format=torch.preserve_format)
                v = torch.zeros_like(p, memory_format=torch.preserve_format)
                if second_moment is not None:
                    v.copy_(second_moment[index].to(device=p.device, dtype=p.dtype))
                state[_EXP_AVG_SQ] = v
                for key in (_CORRECTION, _CORRECTION_KEY, _GLOBAL_UPDATE):
                    state.pop(key, None)
                if global_update is not None:
                    state[_GLOBAL_UPDATE] = global_update[index].to(
                        device=p.device, dtype=p.dtype, copy=True
                    )
                index += 1
            if second_moment is not None:
                negative = [
                    i
                    for i, p in enumerate(group["params"])
                    if bool((self.state[p][_EXP_AVG_SQ] < 0).any())
                ]
                if negative:
                    raise InvalidArgumentError(
                        f"second_moment must be non-negative; parameter(s) {negative} of "
                        "a group hold negative values"
                    )

    def second_moment(self) -> list[Tensor]:
        """The current v, one tensor per parameter in ``param_groups`` order.

        A parameter with no state yet (never stepped and no ``begin_round``) gets zeros.
        The tensors are the optimizer's own: copy them before changing them.
        """
        return [
            self.state[p][_EXP_AVG_SQ] if _EXP_AVG_SQ in self.state[p] else torch.zeros_like(p)
            for p in self._params()
        ]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One FedAdamW step over every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[Tensor] = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        lr: float = group["lr"]
        beta1, beta2 = group["betas"]
        eps: float = group["eps"]
        weight_decay: float = group["weight_decay"]
        alpha: float = group["alpha"]

        group[_ROUND_STEP] += 1
        k: int = group[_ROUND_STEP]
        t: int = group[_GLOBAL_STEP] + k
        step_size = (lr / (1 - beta1**k)) * -1
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5

        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in params:
            if cast(Tensor, p.grad).is_sparse:
                raise InvalidArgumentError("FedAdamW does not support sparse gradients")
            buckets.setdefault((p.device, p.dtype), []).append(p)

        for bucket in buckets.values():
            grads = [cast(Tensor, p.grad) for p in bucket]
            exp_avgs, exp_avg_sqs, corrected, corrections = [], [], [], []
            plain: list[Tensor] = []
            for p in bucket:
                state = self.state[p]
                if _EXP_AVG not in state:
                    state[_EXP_AVG] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state[_EXP_AVG_SQ] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avgs.append(state[_EXP_AVG])
                exp_avg_sqs.append(state[_EXP_AVG_SQ])
                correction = _correction(state, alpha=alpha, weight_decay=weight_decay)
                if correction is None:
                    plain.append(p)
                else:
                    corrected.append(p)
                    corrections.append(correction)

            # x ← x·(1 − lr·λ) − lr·α·ΔG, in one pass where ΔG is set.
            if weight_decay != 0:
                if plain:
                    torch._foreach_mul_(plain, 1 - lr * weight_decay)
                if corrected:
                    torch._foreach_lerp_(corrected, corrections, lr * weight_decay)
            elif corrected:
                torch._foreach_add_(corrected, corrections, alpha=-lr)

            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            if group[_IN_ROUND]:
                # m̂/(√v̂ + ε) = b·m̂/(√v + ε·b) with b = √(1 − β2^t): one pass over the
                # parameters fewer than AdamW's order, which pays for the correction's.
                torch._foreach_add_(denom, eps * bias_correction2_sqrt)
                torch._foreach_addcdiv_(bucket, exp_avgs, denom, step_size * bias_correction2_sqrt)
            else:  # torch.optim.AdamW's exact order of operations
                torch._foreach_div_(denom, bias_correction2_sqrt)
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(bucket, exp_avgs, denom, step_size)


def _correction(state: dict[str, Any], *, alpha: float, weight_decay: float) -> Tensor | None:
    """The stored correction tensor for the fused update, or None when there is nothing to add.

    With λ ≠ 0 it is y = −(α/λ)·ΔG, for ``lerp(x, y, lr·λ)``; with λ = 0 it is α·ΔG, added
    with ``alpha=−lr``. It is recomputed only if α or λ changed since it was made.
    """
    global_update: Tensor | None = state.get(_GLOBAL_UPDATE)
    if global_update is None or alpha == 0:
        return None
    key = (alpha, weight_decay)
    if state.get(_CORRECTION_KEY) != key:
        scale = -alpha / weight_decay if weight_decay != 0 else alpha
        state[_CORRECTION] = global_update.mul(scale)
        state[_CORRECTION_KEY] = key
    correction: Tensor = state[_CORRECTION]
    return correction


def _check_hyperparameters(
    *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float, alpha: float
) -> None:
    if not (math.isfinite(lr) and lr >= 0):
        raise InvalidArgumentError(f"lr must be a finite number >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise InvalidArgumentError(f"betas must be two numbers in [0, 1), got {betas}")
    if not (math.isfinite(eps) and eps >= 0):
        raise InvalidArgumentError(f"eps must be a finite number >= 0, got {eps}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise InvalidArgumentError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if not math.isfinite(alpha):
        raise InvalidArgumentError(f"alpha must be finite, got {alpha}")


def _check_per_param(
    what: str, tensors: Sequence[Tensor] | None, params: list[Tensor], *, allow_scalar: bool
) -> None:
    if tensors is None:
        return
    if len(tensors) != len(params):
        raise InvalidArgumentError(
            f"{what} has {len(tensors)} tensors but the optimizer has {len(params)} parameters"
        )
    for i, (tensor, p) in enumerate(zip(tensors, params, strict=True)):
        if tensor.shape == p.shape or (allow_scalar and tensor.dim() == 0):
            continue
        expected = f"{tuple(p.shape)} or a 0-dim block mean" if allow_scalar else tuple(p.shape)
        raise InvalidArgumentError(
            f"{what}[{i}] has shape {tuple(tensor.shape)}, expected {expected}"
        )

"""FedAdamW against a plain re-derivation of docs/architecture.md, section 2, and against AdamW."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from fedadamw import FedAdamW
from fedadamw.errors import InvalidArgumentError


class Tiny(nn.Module):
    """Two used layers and one parameter that never receives a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.unused = nn.Parameter(torch.randn(5))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.b(torch.tanh(self.a(x)))
        return out


def _model(dtype: torch.dtype = torch.float64) -> Tiny:
    torch.manual_seed(0)
    return Tiny().to(dtype)


def _batches(n: int, dtype: torch.dtype) -> list[Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(8, 4, generator=gen, dtype=dtype) for _ in range(n)]


def _loss(model: nn.Module, x: Tensor) -> Tensor:
    out: Tensor = model(x)
    return (out**2).mean() + out.sum() * 0.1


class Reference:
    """The equations of docs/architecture.md, section 2, one tensor at a time, in float64."""

    def __init__(
        self, *, lr: float, betas: tuple[float, float], eps: float, wd: float, alpha: float
    ):
        self.lr, (self.b1, self.b2), self.eps, self.wd, self.alpha = lr, betas, eps, wd, alpha
        self.m: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}
        self.dg: dict[int, Tensor] = {}
        self.k = 0
        self.t = 0

    def begin_round(
        self, params: list[Tensor], *, dg: list[Tensor] | None, vbar: list[Tensor] | None, t: int
    ) -> None:
        self.k, self.t = 0, t
        for i, p in enumerate(params):
            self.m[i] = torch.zeros_like(p)
            self.v[i] = torch.zeros_like(p) if vbar is None else vbar[i].expand_as(p).clone()
            self.dg[i] = torch.zeros_like(p) if dg is None else dg[i].clone()

    def step(self, params: list[Tensor]) -> None:
        self.k += 1
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            g = p.grad
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            m_hat = self.m[i] / (1 - self.b1**self.k)
            v_hat = self.v[i] / (1 - self.b2 ** (self.t + self.k))
            update = m_hat / (v_hat.sqrt() + self.eps) + self.alpha * self.dg[i] + self.wd * p
            with torch.no_grad():
                p.sub_(self.lr * update)


def _run_rounds(
    model: nn.Module,
    step_fn: object,
    begin: object,
    rounds: list[dict[str, object]],
    xs: list[Tensor],
) -> None:
    steps = iter(xs)
    for spec in rounds:
        begin(spec)  # type: ignore[operator]
        for _ in range(int(spec["K"])):  # type: ignore[call-overload]
            model.zero_grad(set_to_none=True)
            _loss(model, next(steps)).backward()
            step_fn()  # type: ignore[operator]


def _round_specs(model: nn.Module) -> list[dict[str, object]]:
    gen = torch.Generator().manual_seed(2)
    params = list(model.parameters())
    dg = [torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05 for p in params]
    block = [torch.rand((), generator=gen, dtype=p.dtype) * 1e-3 for p in params]
    full = [torch.rand(p.shape, generator=gen, dtype=p.dtype) * 1e-3 for p in params]
    mixed = [b if i % 2 else f for i, (b, f) in enumerate(zip(block, full, strict=True))]
    return [
        {"K": 3, "dg": None, "vbar": None, "t": 0},
        {"K": 4, "dg": dg, "vbar": block, "t": 3},
        {"K": 5, "dg": [d * -2 for d in dg], "vbar": full, "t": 7},
        {"K": 2, "dg": dg, "vbar": mixed, "t": 12},
    ]


@pytest.mark.parametrize(("wd", "alpha"), [(0.01, 0.5), (0.0, 0.5), (0.1, 0.0), (0.05, 1.5)])
def test_matches_the_equations_over_several_rounds(wd: float, alpha: float) -> None:
    mine, ref_model = _model(), _model()
    specs = _round_specs(mine)
    xs = _batches(sum(int(s["K"]) for s in specs), torch.float64)  # type: ignore[call-overload]
    hyper = {"lr": 0.05, "betas": (0.9, 0.99), "eps": 1e-8}
    opt = FedAdamW(mine.parameters(), weight_decay=wd, alpha=alpha, **hyper)  # type: ignore[arg-type]
    ref = Reference(wd=wd, alpha=alpha, **hyper)  # type: ignore[arg-type]
    ref_params = list(ref_model.parameters())
    unused_before = mine.unused.detach().clone()

    _run_rounds(
        mine,
        opt.step,
        lambda s: opt.begin_round(
            global_update=s["dg"], second_moment=s["vbar"], global_step=s["t"]
        ),
        specs,
        xs,
    )
    _run_rounds(
        ref_model,
        lambda: ref.step(ref_params),
        lambda s: ref.begin_round(ref_params, dg=s["dg"], vbar=s["vbar"], t=s["t"]),
        specs,
        xs,
    )

    for (name, p), q in zip(mine.named_parameters(), ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=f"parameter {name}")
    for i, v in enumerate(opt.second_moment()):
        torch.testing.assert_close(v, ref.v[i], rtol=1e-12, atol=1e-18)
    # No gradient: no step, no weight decay, no correction.
    assert torch.equal(mine.unused, unused_before)


def test_the_correction_moves_toward_the_global_update() -> None:
    """With zero gradients and λ = 0, K steps move x by exactly −K·lr·α·ΔG."""
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    dg = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt = FedAdamW([p], lr=0.1, weight_decay=0.0, alpha=0.5)
    opt.begin_round(global_update=[dg], global_step=10)
    for _ in range(4):
        p.grad = torch.zeros_like(p)
        opt.step()
    torch.testing.assert_close(p.detach(), -4 * 0.1 * 0.5 * dg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01, 0.3])
def test_without_begin_round_it_is_adamw_bit_for_bit(
    dtype: torch.dtype, weight_decay: float
) -> None:
    mine = _model(dtype)
    theirs = copy.deepcopy(mine)
    groups = lambda m: [  # noqa: E731 - two parameter groups with different lrs
        {"params": [m.a.weight, m.a.bias, m.unused]},
        {"params": [m.b.weight, m.b.bias], "lr": 0.02},
    ]
    opt = FedAdamW(groups(mine), lr=0.01, weight_decay=weight_decay, alpha=0.5)
    ref = torch.optim.AdamW(groups(theirs), lr=0.01, weight_decay=weight_decay, foreach=True)
    for x in _batches(25, dtype):
        for model, o in ((mine, opt), (theirs, ref)):
            o.zero_grad()
            _loss(model, x).backward()
            o.step()
    for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)


def test_begin_round_restarts_m_and_the_local_step() -> None:
    model = _model()
    opt = FedAdamW(model.parameters(), lr=0.01)
    for x in _batches(3, torch.float64):
        opt.zero_grad()
        _loss(model, x).backward()
        opt.step()
    opt.begin_round(global_step=3)
    assert all(g["round_step"] == 0 and g["global_step"] == 3 for g in opt.param_groups)
    assert all(torch.count_nonzero(opt.state[p]["exp_avg"]) == 0 for p in model.parameters())
    assert all(torch.count_nonzero(v) == 0 for v in opt.second_moment())


def test_state_dict_round_trip_keeps_the_round() -> None:
    model = _model()
    specs = _round_specs(model)[1]
    opt = FedAdamW(model.parameters(), lr=0.01)
    opt.begin_round(global_update=specs["dg"], second_moment=specs["vbar"], global_step=9)  # type: ignore[arg-type]
    x1, x2 = _batches(2, torch.float64)
    opt.zero_grad()
    _loss(model, x1).backward()
    opt.step()

    clone = copy.deepcopy(model)
    restored = FedAdamW(clone.parameters(), lr=0.01)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (clone, restored)):
        o.zero_grad()
        _loss(m, x2).backward()
        o.step()
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)


def test_changing_alpha_mid_round_takes_effect() -> None:
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = FedAdamW([p], lr=1.0, weight_decay=0.1, alpha=0.5)
    opt.begin_round(global_update=[torch.ones(2, dtype=torch.float64)])
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((2,), -0.5, dtype=torch.float64))
    opt.param_groups[0]["alpha"] = 2.0
    opt.step()
    # x ← x − lr·(α·ΔG + λ·x) = −0.5 − (2 − 0.05)
    torch.testing.assert_close(p.detach(), torch.full((2,), -2.45, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"global_update": [torch.zeros(1)]}, "global_update has 1 tensors"),
        ({"second_moment": [torch.zeros(2, 2)] * 5}, "second_moment[0] has shape (2, 2)"),
        ({"second_moment": [torch.tensor(-1.0)] * 5}, "non-negative"),
        ({"global_step": -1}, "global_step"),
    ],
)
def test_begin_round_rejects_bad_state(kwargs: dict[str, object], message: str) -> None:
    opt = FedAdamW(_model().parameters())
    with pytest.raises(InvalidArgumentError) as info:
        opt.begin_round(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"betas": (1.0, 0.9)},
        {"eps": -1e-8},
        {"weight_decay": -0.1},
        {"alpha": math.inf},
    ],
)
def test_rejects_bad_hyperparameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        FedAdamW(_model().parameters(), **kwargs)  # type: ignore[arg-type]


def test_rejects_sparse_gradients() -> None:
    emb = nn.Embedding(10, 3, sparse=True)
    opt = FedAdamW(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(InvalidArgumentError, match="sparse"):
        opt.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu() -> None:
    cpu_model = _model(torch.float32)
    gpu_model = copy.deepcopy(cpu_model).cuda()
    specs = _round_specs(cpu_model)[2]
    cpu_opt = FedAdamW(cpu_model.parameters(), lr=0.01)
    gpu_opt = FedAdamW(gpu_model.parameters(), lr=0.01)
    cpu_opt.begin_round(global_update=specs["dg"], second_moment=specs["vbar"], global_step=5)  # type: ignore[arg-type]
    gpu_opt.begin_round(
        global_update=[t.cuda() for t in specs["dg"]],  # type: ignore[attr-defined]
        second_moment=[t.cuda() for t in specs["vbar"]],  # type: ignore[attr-defined]
        global_step=5,
    )
    for x in _batches(5, torch.float32):
        for m, o, dev in ((cpu_model, cpu_opt, "cpu"), (gpu_model, gpu_opt, "cuda")):
            o.zero_grad()
            _loss(m, x.to(dev)).backward()
            o.step()
    for p, q in zip(cpu_model.parameters(), gpu_model.parameters(), strict=True):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-5, atol=1e-6)

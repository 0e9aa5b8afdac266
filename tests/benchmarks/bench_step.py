"""Step overhead: one ``FedAdamW.step()`` over ``torch.optim.AdamW(foreach=True).step()``.

The parameters are those of a small Transformer language model of about 10M parameters
(an 8192 × 512 embedding and two layers of width 512 with a 2048-wide MLP) on the CPU, with
fixed random gradients. Three optimizers step the same tensors in turn, repeatedly, and the
median times are compared, so that the machine's background load hits all three alike:

- ``AdamW``: ``torch.optim.AdamW(foreach=True)``, the reference;
- ``FedAdamW, no round``: FedAdamW before any ``begin_round`` (the AdamW path);
- ``FedAdamW, in a round``: after ``begin_round`` with a nonzero ΔG and block-mean v̄, the
  path every federated round takes (it adds the correction α·ΔG).

    python -m tests.benchmarks.bench_step [--repeats 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fedadamw import FedAdamW


def transformer_parameters(
    *, vocab: int = 8192, width: int = 512, hidden: int = 2048, layers: int = 2
) -> list[nn.Parameter]:
    shapes: list[tuple[int, ...]] = [(vocab, width)]
    for _ in range(layers):
        shapes += [(width,), (width,)]  # layer norm
        shapes += [(width, width), (width,)] * 4  # q, k, v, out
        shapes += [(width,), (width,), (hidden, width), (hidden,), (width, hidden), (width,)]
    shapes += [(width,), (width,)]
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        params.append(p)
    return params


def _median_ms(step: Callable[[], object], samples: list[float]) -> None:
    start = time.perf_counter()
    step()
    samples.append((time.perf_counter() - start) * 1000)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="5 repeats")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats

    sets = [transformer_parameters() for _ in range(3)]
    count = sum(p.numel() for p in sets[0])
    adamw = torch.optim.AdamW(sets[0], lr=1e-3, weight_decay=0.01, foreach=True)
    plain = FedAdamW(sets[1], lr=1e-3, weight_decay=0.01, alpha=0.5)
    in_round = FedAdamW(sets[2], lr=1e-3, weight_decay=0.01, alpha=0.5)
    in_round.begin_round(
        global_update=[torch.randn_like(p) * 1e-4 for p in sets[2]],
        second_moment=[torch.tensor(1e-6) for _ in sets[2]],
        global_step=100,
    )
    optimizers = {"AdamW": adamw, "FedAdamW, no round": plain, "FedAdamW, in a round": in_round}
    samples: dict[str, list[float]] = {name: [] for name in optimizers}
    for opt in optimizers.values():  # warm up: state allocation, first-touch pages
        for _ in range(3):
            opt.step()
    for _ in range(repeats):
        for name, opt in optimizers.items():
            _median_ms(opt.step, samples[name])

    reference = statistics.median(samples["AdamW"])
    print(
        f"Step time, {count / 1e6:.2f}M parameters, float32, CPU, "
        f"{torch.get_num_threads()} threads, median of {repeats} interleaved steps"
    )
    print(f"{'optimizer':24} {'median ms':>10} {'ratio to AdamW':>15}")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"{name:24} {median:10.2f} {median / reference:15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cost of a secure round by cohort size: the chosen (k, t) and the time of each phase.

For each cohort size ``n``, :func:`~secure_agg.choose_parameters` picks ``(k, t)`` at the
coordinator's default rates (dropout 0.1, corrupt 0.05), and one whole round of the
``secure_agg`` state machines runs in this process with ``d`` deltas (100,000 by default):
``n`` honest clients, one honest server, the clients the dropout rate names (``round(δ n)``,
a fixed seeded choice) dropping after they shared their keys, so the server must rebuild
their pair masks. Every call into a state machine is timed on its own:

- *client*, the average over the clients that work in the phase, per client: advertise keys
  (two X25519 key pairs, a signature), share keys (check the broadcast's ``n`` signatures
  and the graph, ``2k`` key agreements, Shamir-share two secrets, seal ``k`` shares), masked
  input (open the ``k`` shares, then ``k + 1`` PRG expansions of ``d`` elements; the
  quantization before it is left out), consistency (one signature) and unmasking (check
  ``k`` signatures, reveal shares);
- *server*, the whole phase: receiving every message and closing (the unmasking close
  rebuilds the survivors' self masks and the dropped clients' pair masks).

Each size runs ``--repeats`` rounds (3; 2 with ``--quick``) and keeps the best of each cell.
A round's cost is about ``n`` times the client column plus the server column. Lines marked
``before`` run the parameters of the finder before it took the cheapest graph at every
size (commit abe27af: the complete graph up to ``n = 100``, ``k = 99, t = 53`` there, and
``k = 26, t = 16`` at ``n = 103``) on the same code.

    python -m tests.benchmarks cohort [--quick]
    python -m tests.benchmarks.bench_cohort --sizes 100 --degree 99 --threshold 53
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from secure_agg import (
    ClientMaskedInput,
    ServerCompleted,
    choose_parameters,
    encode,
    start_client,
)
from secure_agg.graph_params import GraphParameters
from secure_agg.threshold import DEFAULT_CORRUPT_RATE
from tests.benchmarks.bench_secagg import MOMENT_BLOCKS, _table
from tests.secure_agg.harness import Round, make_config, random_values, seeded_source

PHASES = ("advertise keys", "share keys", "masked input", "consistency", "unmasking")
SIZES = (20, 50, 80, 100, 103, 120, 150, 200)
QUICK_SIZES = (20, 100, 103)
DROPOUT_RATE = 0.1
BEFORE = {100: GraphParameters(degree=None, threshold=53), 103: GraphParameters(26, 16)}
"""What the finder chose at commit abe27af for these sizes at the default rates."""


class _Clock:
    """Seconds spent per phase, by the clients (with a count of calls) and by the server."""

    def __init__(self) -> None:
        self.client = dict.fromkeys(PHASES, 0.0)
        self.calls = dict.fromkeys(PHASES, 0)
        self.server = dict.fromkeys(PHASES, 0.0)

    def on_client(self, phase: str, run: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = run()
        self.client[phase] += time.perf_counter() - start
        self.calls[phase] += 1
        return result

    def on_server(self, phase: str, run: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = run()
        self.server[phase] += time.perf_counter() - start
        return result

    def client_average(self, phase: str) -> float:
        return self.client[phase] / max(1, self.calls[phase])

    def best(self, other: _Clock) -> _Clock:
        """Each cell the smaller of the two runs' (the repeats run the same round)."""
        out = _Clock()
        for phase in PHASES:
            mine, theirs = self.client_average(phase), other.client_average(phase)
            out.client[phase], out.calls[phase] = min(mine, theirs), 1
            out.server[phase] = min(self.server[phase], other.server[phase])
        return out


def bench_round(
    n: int, d: int, params: GraphParameters, *, dropout_rate: float = DROPOUT_RATE
) -> _Clock:
    """One round of ``n`` clients with ``params``; the time of each phase."""
    config = make_config(
        delta_length=d,
        threshold=params.threshold,
        degree=params.degree,
        max_clients=n,
        moment_length=MOMENT_BLOCKS,
    )
    seed = f"cohort-{n}-{params.degree}-{params.threshold}"
    round_ = Round(config, range(1, n + 1), seed=seed, corrupt_rate=DEFAULT_CORRUPT_RATE)
    layout = config.params.layout
    dropped = set(random.Random(n).sample(round_.ids, round(dropout_rate * n)))
    expected = np.zeros(layout.length, dtype=layout.dtype)
    clock = _Clock()
    gc.collect()

    def serve(phase: str, message: Any) -> None:
        clock.on_server(phase, lambda: round_.phase.receive(message))

    def close(phase: str) -> None:
        step = clock.on_server(phase, round_.phase.close)
        round_.server, round_.outbox = step.state, step.messages

    def answer(phase: str, skip: set[int]) -> None:
        for cid, message in sorted(round_.outbox.items()):
            if cid in skip:
                continue
            step = clock.on_client(phase, functools.partial(round_.clients[cid].handle, message))
            round_.clients[cid] = step.state
            if step.message is not None:
                serve(phase, step.message)

    phase = "advertise keys"
    for cid in round_.ids:
        step = clock.on_client(
            phase,
            functools.partial(
                start_client,
                config,
                client_id=cid,
                identity_key=round_.identities[cid],
                corrupt_rate=DEFAULT_CORRUPT_RATE,
                source=seeded_source(seed, "client", cid),
            ),
        )
        round_.clients[cid] = step.state
        serve(phase, step.message)
    close(phase)

    answer("share keys", set())
    close("share keys")

    phase = "masked input"
    answer(phase, dropped)  # open the shares
    for cid in sorted(set(round_.ids) - dropped):
        values = random_values(config, cid, seed)
        encoded = encode(layout, values, source=seeded_source(seed, "q", cid))
        np.add(expected, encoded, out=expected)
        state = round_.clients[cid]
        assert isinstance(state, ClientMaskedInput), state
        step = clock.on_client(phase, functools.partial(state.mask, encoded))
        clock.calls[phase] -= 1  # opening and masking are one client's work in this phase
        round_.clients[cid] = step.state
        serve(phase, step.message)
    close(phase)

    answer("consistency", dropped)
    close("consistency")
    answer("unmasking", dropped)
    close("unmasking")

    done = round_.server
    assert isinstance(done, ServerCompleted), done
    assert set(done.result.survivors) == set(round_.ids) - dropped
    assert np.array_equal(done.result.ring_sum, expected)
    return clock


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _row(label: str, n: int, params: GraphParameters, clock: _Clock) -> list[str]:
    client_total = sum(clock.client_average(p) for p in PHASES)
    server_total = sum(clock.server.values())
    cells = [f"{_ms(clock.client_average(p))} / {_ms(clock.server[p])}" for p in PHASES]
    round_total = n * client_total + server_total
    k = params.neighbours(n)
    return [
        label,
        str(k) if params.degree is not None else f"{k} (complete)",
        str(params.threshold),
        *cells,
        _ms(client_total),
        _ms(server_total),
        f"{round_total:.2f}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} only")
    parser.add_argument(
        "--sizes", type=int, nargs="+", help=f"cohort sizes (default: {' '.join(map(str, SIZES))})"
    )
    parser.add_argument("--d", type=int, default=100_000, help="deltas per client (100,000)")
    parser.add_argument(
        "--repeats", type=int, help="rounds per size, best of each cell (default 3; 2 with --quick)"
    )
    parser.add_argument(
        "--degree", type=int, help="use this degree instead of the chosen one (n - 1: complete)"
    )
    parser.add_argument(
        "--threshold",
        type=int,
        help="use this t instead of the chosen one (clients refuse one below the safe t)",
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    overridden = args.degree is not None or args.threshold is not None

    repeats = args.repeats or (2 if args.quick else 3)
    print(
        f"Secure round by cohort size{' (--quick)' if args.quick else ''}, d = {args.d:,}, "
        f"dropout {DROPOUT_RATE}, corrupt {DEFAULT_CORRUPT_RATE}, best of {repeats}; "
        f"CPU, {os.cpu_count()} cores, python {sys.version.split()[0]}\n"
    )
    bench_round(10, args.d, choose_parameters(10, dropout_rate=0.1, corrupt_rate=0.05))  # warm-up
    rows = []
    for n in sizes:
        chosen = choose_parameters(n, dropout_rate=DROPOUT_RATE, corrupt_rate=DEFAULT_CORRUPT_RATE)
        if overridden:
            degree = chosen.degree if args.degree is None else args.degree
            chosen = GraphParameters(
                degree=None if degree is None or degree >= n - 1 else degree,
                threshold=args.threshold if args.threshold is not None else chosen.threshold,
            )
        runs = [(str(n) + (" (given)" if overridden else ""), chosen)]
        if not overridden and n in BEFORE:
            runs.append((f"{n} (before)", BEFORE[n]))
        for label, params in runs:
            clock = bench_round(n, args.d, params)
            for _ in range(repeats - 1):
                clock = clock.best(bench_round(n, args.d, params))
            rows.append(_row(label, n, params, clock))
            print(f"  n={label} done", file=sys.stderr, flush=True)
    headers = ["n", "k", "t", *PHASES, "client total", "server total", "round s"]
    print(_table(headers, rows))
    print(
        "\nPhase cells: ms per client (average over the clients working in it) / ms of the "
        "server.\nround s = n x client total + server total: the work of one round on one "
        f"core. {round(DROPOUT_RATE * 100)} % of the clients drop after sharing keys."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

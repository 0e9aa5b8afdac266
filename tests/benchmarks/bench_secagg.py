"""SecAgg+ costs: mask generation, client time per round, server time and memory.

Three benchmarks, as issue 3 asks:

1. **Mask generation.** One PRG mask of ``d`` ring elements (``uint32``) added into a
   preallocated vector (``prg.add_masks``), against the raw AES-256-CTR keystream that
   ``cryptography`` writes into a preallocated buffer (``update_into`` over zeros, 1 MiB at a
   time), in the same run. The repeats are interleaved and the best of each is kept; the
   ratio is mask time / raw time. Adding a mask must also read and write the target
   vector, which no keystream-only loop does, so the ratio cannot reach 1.
2. **Client time per round**, one client in a cohort of ``n`` on a k-regular graph
   (``t = k/2 + 1``), for each ``d`` and ``k``. Each state-machine step is timed on its own
   (best of 3: a state may handle the same message again, so a step can be repeated):
   ``advertise`` (two X25519 key pairs, one signature), ``keys+sharing`` (check the
   broadcast's ``n`` signatures, session id and graph, 2k X25519+HKDF, Shamir-share b and
   s_sk, seal k shares; the X25519+HKDF part is also timed alone as ``agree``),
   ``open shares``, ``masking`` (k + 1 PRG expansions of ``d`` elements), ``consistency``
   (one signature) and ``unmask`` (check neighbours' signatures, reveal shares). Each is
   shown as a ratio to ``quantize``, the time to encode the same vector (``d`` deltas, 64
   block means, weight, clip count) with stochastic rounding.
3. **Server time and peak memory** to finish a round of ``n`` clients and ``d`` deltas with a
   fraction dropped after sharing keys (so their pair masks must be rebuilt from s_sk
   shares). The round is first played in process with honest clients while every message
   the server receives is recorded; the server alone then *replays* the round from those
   messages (it uses no randomness, so the replay is the same round): once timed, once under
   ``tracemalloc`` (which traces numpy's allocations) for the peak. Recorded messages exist
   before tracing starts, so the peak is the server's own memory: the running sum, PRG
   scratch, keys, routed shares. ``peak input+unmask`` restarts the peak when phase 2
   opens (it includes the running sum, made when phase 1 closes).

    python -m tests.benchmarks.bench_secagg [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secure_agg import (
    ClientMaskedInput,
    ConsistencyRequest,
    ServerCompleted,
    SurvivorSignature,
    UnmaskRequest,
    choose_parameters,
    encode,
    kdf,
    shamir,
    signing,
    start_client,
    start_server,
)
from secure_agg.prg import add_masks, keystream_into
from secure_agg.session import commit_self_mask
from secure_agg.threshold import DEFAULT_CORRUPT_RATE, required_threshold
from secure_agg.unmasking import recover_secret
from tests.secure_agg.harness import Round, make_config, random_values

MOMENT_BLOCKS = 64


def _best(run: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _timed(run: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    """The result of the last of ``repeats`` runs, and the smallest wall time of them."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return result, best


# 1. Mask generation ---------------------------------------------------------------------


def bench_mask_generation(d: int, repeats: int) -> dict[str, float]:
    target = np.zeros(d, dtype=np.uint32)
    raw = np.empty(d, dtype=np.uint32)
    seed = os.urandom(32)
    zeros = memoryview(bytes(1 << 20))
    raw_view = raw.data.cast("B")

    def raw_keystream() -> None:
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        for offset in range(0, raw.nbytes, len(zeros)):
            step = min(len(zeros), raw.nbytes - offset)
            encryptor.update_into(zeros[:step], raw_view[offset:])

    raw_keystream()  # first touch of the pages
    add_masks(target, add=[seed])
    # Interleave the three so that the machine's background load hits them alike.
    samples: dict[str, list[float]] = {"raw": [], "expand": [], "mask": []}
    runs: dict[str, Callable[[], object]] = {
        "raw": raw_keystream,
        "expand": lambda: keystream_into(seed, raw),
        "mask": lambda: add_masks(target, add=[seed]),
    }
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(_best(run, 1))
    raw_s, expand_s, mask_s = (min(samples[name]) for name in ("raw", "expand", "mask"))
    nbytes = 4 * d
    return {
        "raw_gbps": nbytes / raw_s / 1e9,
        "expand_gbps": nbytes / expand_s / 1e9,
        "mask_gbps": nbytes / mask_s / 1e9,
        "ratio": mask_s / raw_s,
    }


# 2. Client time per round ---------------------------------------------------------------


def bench_client(d: int, k: int, n: int) -> dict[str, float]:
    """Seconds per step for client 1 of ``n`` on a degree-``k`` graph, ``d`` deltas."""
    max_clients = max(n, 64)
    config = make_config(
        delta_length=d,
        threshold=required_threshold(
            clients=max_clients, holders=k, corrupt_rate=DEFAULT_CORRUPT_RATE
        ),
        degree=k,
        max_clients=max_clients,
        moment_length=MOMENT_BLOCKS,
    )
    layout = config.params.layout
    round_ = Round(config, range(1, n + 1), seed=f"client-{d}-{k}")
    me = 1
    times: dict[str, float] = {}

    step, times["advertise"] = _timed(
        lambda: start_client(config, client_id=me, identity_key=round_.identities[me]), 1
    )
    round_.clients[me] = step.state
    round_.send(step.message)
    round_.advertise(drop={me})

    broadcast = round_.outbox[me]
    step, times["keys+sharing"] = _timed(lambda: round_.clients[me].handle(broadcast))
    round_.clients[me] = step.state
    round_.send(step.message)
    round_.deliver(drop={me})
    round_.close()

    delivery = round_.outbox[me]
    step, times["open shares"] = _timed(lambda: round_.clients[me].handle(delivery))
    masking_state = step.state
    assert isinstance(masking_state, ClientMaskedInput)

    values = random_values(config, me, "bench")
    times["quantize"] = _best(lambda: encode(layout, values), 3)
    encoded = encode(layout, values)
    step, times["masking"] = _timed(lambda: masking_state.mask(encoded))

    # The rest of the cohort masks nothing here: their consistency signatures, which is all
    # client 1 sees of them, are made directly with their identity keys.
    session_id = masking_state.session_id
    alive = tuple(range(1, n + 1))
    request = ConsistencyRequest(session_id=session_id, alive=alive, dead=())
    step, times["consistency"] = _timed(lambda: step.state.handle(request))
    payload = signing.consistency_payload(session_id=session_id, survivors=alive)
    neighbours = round_.phase.data.session.neighbours(me)  # type: ignore[attr-defined]
    signatures = tuple(
        SurvivorSignature(peer, signing.sign(round_.identities[peer], payload))
        for peer in sorted(neighbours)
    )
    unmask_request = UnmaskRequest(session_id=session_id, signatures=signatures)
    unmasking_state = step.state
    step, times["unmask"] = _timed(lambda: unmasking_state.handle(unmask_request))
    assert type(step.state).__name__ == "ClientCompleted"

    own_keys = [kdf.generate_private_key(os.urandom) for _ in range(2)]
    peer_keys = [kdf.public_bytes(kdf.generate_private_key(os.urandom)) for _ in range(2 * k)]

    def agree() -> None:
        for index, peer in enumerate(peer_keys):
            kdf.derive_pair_key(
                own_keys[index % 2],
                peer,
                session_id=session_id,
                purpose=kdf.Purpose.PAIR_MASK,
                own_id=me,
                peer_id=index + 2,
            )

    times["agree"] = _best(agree, 3)
    return times


# 4. Commitment checks --------------------------------------------------------------------


def bench_commitments(threshold: int, holders: int, repeats: int) -> dict[str, float]:
    """Seconds to rebuild one client's two secrets from ``holders`` shares: Shamir alone,
    and with the commitment checks (b against its hash, s_sk against its public key)."""
    source = os.urandom
    secret = int.from_bytes(source(32), "little") % shamir.PRIME
    masking_key = kdf.generate_private_key(source)
    scalar = kdf.private_scalar(masking_key)
    public = kdf.public_bytes(masking_key)
    xs = list(range(1, holders + 1))
    b_shares = dict(
        zip(xs, shamir.split(secret, threshold=threshold, xs=xs, source=source), strict=True)
    )
    s_shares = dict(
        zip(xs, shamir.split(scalar, threshold=threshold, xs=xs, source=source), strict=True)
    )
    commitment = commit_self_mask(round_id="bench", client_id=1, secret=secret)

    def plain() -> None:
        shamir.combine(b_shares, threshold=threshold)
        shamir.combine(s_shares, threshold=threshold)

    def checked() -> None:
        recover_secret(
            b_shares,
            threshold=threshold,
            matches=lambda b: (
                commit_self_mask(round_id="bench", client_id=1, secret=b) == commitment
            ),
            what="b",
        )
        recover_secret(
            s_shares,
            threshold=threshold,
            matches=lambda s: kdf.scalar_matches_public_key(s, public),
            what="s",
        )

    return {"shamir": _best(plain, repeats), "checked": _best(checked, repeats)}


# 3. Server time and memory --------------------------------------------------------------


def _record_round(
    n: int, d: int, dropped_fraction: float, *, degree: int | None, threshold: int
) -> tuple[Any, dict[int, bytes], list[tuple[str, Any]], frozenset[int]]:
    """Play a round with honest clients; return config, cohort and the server's inputs."""
    config = make_config(
        delta_length=d,
        threshold=threshold,
        degree=degree,
        max_clients=max(n, 64),
        moment_length=MOMENT_BLOCKS,
    )
    round_ = Round(config, range(1, n + 1), seed=f"server-{n}-{d}-{dropped_fraction}")
    round_.keep_values = False
    events: list[tuple[str, Any]] = []
    receive, close = round_.send, round_.close

    def recording_send(message: Any) -> None:
        events.append(("receive", message))
        receive(message)

    def recording_close() -> None:
        events.append(("close", None))
        close()

    round_.send = recording_send  # type: ignore[method-assign]
    round_.close = recording_close  # type: ignore[method-assign]
    dropped = set(random.Random(n).sample(range(1, n + 1), round(dropped_fraction * n)))
    state = round_.run(after_shares=dropped)
    assert isinstance(state, ServerCompleted), state
    assert np.array_equal(state.result.ring_sum, round_.expected_ring_sum(state.result.survivors))
    cohort = {cid: signing.identity_public_bytes(key) for cid, key in round_.identities.items()}
    return config, cohort, events, frozenset(state.result.survivors)


def _replay(
    config: Any, cohort: dict[int, bytes], events: list[tuple[str, Any]]
) -> dict[str, float]:
    """Seconds the server spends per stage: phases 0-1, phases 2-3, the final unmasking."""
    gc.collect()
    server: Any = start_server(config, cohort=cohort)
    stage_of_phase = {0: "keys", 1: "keys", 2: "input", 3: "input", 4: "unmask"}
    times = dict.fromkeys(("keys", "input", "unmask"), 0.0)
    for kind, message in events:
        stage = stage_of_phase[int(server.phase)]
        start = time.perf_counter()
        if kind == "receive":
            server.receive(message)
        else:
            server = server.close().state
        times[stage] += time.perf_counter() - start
    assert isinstance(server, ServerCompleted)
    return {**times, "total": sum(times.values())}


def bench_server(
    n: int, d: int, dropped_fraction: float, *, degree: int | None, threshold: int
) -> dict[str, float]:
    config, cohort, events, survivors = _record_round(
        n, d, dropped_fraction, degree=degree, threshold=threshold
    )
    timing = _replay(config, cohort, events)
    memory = _replay_peaks(config, cohort, events)
    return {**timing, **memory, "survivors": float(len(survivors))}


def _replay_peaks(
    config: Any, cohort: dict[int, bytes], events: list[tuple[str, Any]]
) -> dict[str, float]:
    """Peak traced bytes over the whole round and from phase 2 on, in MB."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    server: Any = start_server(config, cohort=cohort)
    closes = 0
    tail_base_peak = 0
    for kind, message in events:
        if kind == "receive":
            server.receive(message)
        else:
            server = server.close().state
            closes += 1
            if closes == 2:
                # Phase 2 opens: remember the peak so far, restart it for the tail.
                tail_base_peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.reset_peak()
    whole_peak_tail = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(server, ServerCompleted)
    return {
        "peak_mb": (max(tail_base_peak, whole_peak_tail) - base) / 1e6,
        "peak_tail_mb": (whole_peak_tail - base) / 1e6,
    }


# Output ---------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, rule, *body])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args = parser.parse_args(argv)
    quick = args.quick

    bench_client(10_000, 8, 12)  # warm up imports, OpenSSL contexts and numpy kernels
    mask_d = 1_000_000 if quick else 10_000_000
    client_ds = [100_000] if quick else [1_000_000, 10_000_000]
    client_n = 40 if quick else 100
    server_n, server_d = (30, 100_000) if quick else (100, 1_000_000)
    side_by_side = (10, 40) if quick else (50, 200)

    print(f"SecAgg+ benchmark{' (--quick)' if quick else ''}, CPU, {os.cpu_count()} cores")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}\n")

    figures = bench_mask_generation(mask_d, repeats=9)
    print(f"1. Mask generation, d = {mask_d:,} uint32 (best of 9, interleaved)\n")
    print(
        _table(
            ["what", "GB/s"],
            [
                [
                    "raw AES-256-CTR keystream (cryptography update_into)",
                    f"{figures['raw_gbps']:.2f}",
                ],
                ["PRG expand into a buffer (keystream_into)", f"{figures['expand_gbps']:.2f}"],
                ["one mask added into the vector (add_masks)", f"{figures['mask_gbps']:.2f}"],
            ],
        )
    )
    print(
        f"\nmask time / raw keystream time = {figures['ratio']:.2f} (target <= 1.5)\n", flush=True
    )

    print(
        f"2. Client time per round, one client of n = {client_n}, "
        "t the least safe at corrupt rate 0.05 (ms)\n"
    )
    steps = [
        "advertise",
        "keys+sharing",
        "agree",
        "open shares",
        "masking",
        "consistency",
        "unmask",
    ]
    rows = []
    for d in client_ds:
        for k in (8, 16, 32):
            times = bench_client(d, k, client_n)
            quantize = times["quantize"]
            total = sum(times[s] for s in steps if s != "agree")
            rows.append(
                [f"{d:,}", str(k), _ms(quantize)]
                + [f"{_ms(times[s])} ({times[s] / quantize:.2f})" for s in steps]
                + [f"{_ms(total)} ({total / quantize:.2f})"]
            )
            print(f"  d={d:,} k={k} done", file=sys.stderr, flush=True)
    print(_table(["d", "k", "quantize", *steps, "total"], rows))
    print(
        "\nEach cell: milliseconds (ratio to quantize). 'agree' (2k X25519+HKDF) is part of "
        "'keys+sharing'; 'total' leaves it out.\n",
        flush=True,
    )

    params = choose_parameters(server_n, dropout_rate=0.3, corrupt_rate=0.0)
    print(
        f"3. Server time and peak memory, n = {server_n}, d = {server_d:,}, "
        f"{'complete graph' if params.degree is None else f'k = {params.degree}'}, "
        f"t = {params.threshold}\n"
    )
    rows = []
    for fraction in (0.0, 0.1, 0.3):
        result = bench_server(
            server_n, server_d, fraction, degree=params.degree, threshold=params.threshold
        )
        rows.append(
            [
                f"{fraction:.0%}",
                f"{result['survivors']:.0f}",
                _ms(result["keys"]),
                _ms(result["input"]),
                _ms(result["unmask"]),
                _ms(result["total"]),
                f"{result['peak_mb']:.1f}",
                f"{result['peak_tail_mb']:.1f}",
            ]
        )
        print(f"  dropped {fraction:.0%} done", file=sys.stderr, flush=True)
    headers = [
        "dropped after sharing",
        "survivors",
        "phases 0-1 ms",
        "input+check ms",
        "unmask ms",
        "total ms",
        "peak MB",
        "peak input+unmask MB",
    ]
    print(_table(headers, rows))
    print(f"\n(one masked vector is {4 * (server_d + MOMENT_BLOCKS + 2) / 1e6:.1f} MB)\n")

    print(f"Peak memory against n, d = {server_d:,}, 10% dropped after sharing\n")
    rows = []
    for n in side_by_side:
        graph = choose_parameters(n, dropout_rate=0.1, corrupt_rate=0.0)
        result = bench_server(n, server_d, 0.1, degree=graph.degree, threshold=graph.threshold)
        rows.append(
            [
                str(n),
                "complete" if graph.degree is None else str(graph.degree),
                str(graph.threshold),
                _ms(result["total"]),
                f"{result['peak_mb']:.1f}",
                f"{result['peak_tail_mb']:.1f}",
            ]
        )
        print(f"  n={n} done", file=sys.stderr, flush=True)
    print(_table(["n", "k", "t", "total ms", "peak MB", "peak input+unmask MB"], rows))
    print("\nPeak memory: tracemalloc (numpy allocations are traced), server replay only.")

    print("\n4. Rebuilding one client's b and s_sk at unmasking, with and without the")
    print("   commitment checks (best of 20, ms per client)\n")
    rows = []
    for threshold, holders in ((4, 7), (16, 30)) if quick else ((4, 7), (16, 30), (53, 99)):
        figures = bench_commitments(threshold, holders, 20)
        rows.append(
            [
                str(threshold),
                str(holders),
                f"{figures['shamir'] * 1000:.2f}",
                f"{figures['checked'] * 1000:.2f}",
                f"{(figures['checked'] - figures['shamir']) * 1000:.2f}",
            ]
        )
    print(_table(["t", "shares", "Shamir only", "with checks", "added"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The soak: many rounds on PostgreSQL with agents killed at random and the coordinator
restarted, sampling what could leak (``make soak``).

    python -m tests.benchmarks.soak [--rounds 200] [--agents 6] [--restart-every 50]
                                    [--kill-rate 0.15] [--vacuum-every 10] [--keep-rounds 50]
                                    [--out runs/soak]

A real ``fedadamw-coordinator run`` (mutual TLS, PostgreSQL in a schema of its own) and real
``fedadamw-edge run`` agents train the built-in digits task. After each round that ends
(committed or aborted), with probability ``--kill-rate`` one agent gets SIGKILL and is
started again; every ``--restart-every`` rounds the coordinator gets SIGKILL and is started
again on the same data directory. Each round it samples the coordinator's RSS and open file
descriptors, the database's size (every table and index of its schema) and the blob store's
and spool's bytes on disk. It writes ``samples.csv`` and ``soak.png`` into ``--out`` and
prints a summary line per quantity: its mean over the first and the last quarter of the
rounds, and the slope of a least-squares line per 100 rounds. A quantity is flat when its
last quarter is within 25% (and 8 MiB) of its first; the exit code is 1 if one is not.

Each round's end deletes its protocol records, which PostgreSQL's autovacuum makes reusable.
Where a server has autovacuum off, the soak VACUUMs its schema every ``--vacuum-every``
rounds in its place, and says so: without it, the database grows by the deleted rows. The
coordinator keeps the history of the newest ``--keep-rounds`` rounds (``[retention]
keep_rounds``), so the database levels off once that many have ended.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from coordinator.store.sql import SqlStore
from tests.e2e.harness import (
    FAST,
    Coordinator,
    drop_postgres_schema,
    enrolled_agents,
    merged,
    postgres_url_for_schema,
)

QUANTITIES = ("rss_bytes", "open_fds", "database_bytes", "blob_bytes", "spool_bytes")


@dataclass(frozen=True)
class Sample:
    round: int
    outcome: str
    seconds: float
    rss_bytes: int
    open_fds: int
    database_bytes: int
    blob_bytes: int
    spool_bytes: int


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tree_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _database_bytes(schema: str) -> int:
    import psycopg

    from tests.e2e.harness import PG_URL

    base = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
            (schema,),
        ).fetchone()
    return int(row[0]) if row else 0


def _pg(query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    import psycopg

    from tests.e2e.harness import PG_URL

    base = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return list(cursor.fetchall()) if cursor.description else []


def _autovacuum_on() -> bool:
    return _pg("SHOW autovacuum")[0][0] == "on"


def _vacuum(schema: str) -> None:
    """What autovacuum does on a default server: reclaim the rows deleted at each round's
    end for reuse (a plain VACUUM; the files keep their size)."""
    tables = _pg(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,)
    )
    for (table,) in tables:
        _pg(f'VACUUM "{schema}"."{table}"')


def _rounds_ended(store: SqlStore) -> list[tuple[int, str]]:
    """(number, outcome) of every round that has ended, in order."""
    return sorted(
        (r.number, r.outcome.value) for r in store.list_rounds() if r.outcome.value != "running"
    )


def soak(args: argparse.Namespace) -> list[Sample]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = out / f"run-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    schema = f"soak_{uuid.uuid4().hex[:12]}"
    settings = merged(
        FAST,
        rounds=args.rounds + 1000,  # never finished: the soak stops it
        cohort=args.agents - 1,
        min_clients=max(3, args.agents - 3),
        local_steps=2,
        deadlines={"selection": 3, "masked_input": 30},
        retention={"keep_rounds": args.keep_rounds},
    )
    url = postgres_url_for_schema(schema)
    coordinator = Coordinator(root, settings, db_url=url)
    coordinator.start()
    store = SqlStore(url)
    agents = enrolled_agents(coordinator, root, args.agents)
    rng = random.Random(args.seed)
    samples: list[Sample] = []
    restarts = kills = 0
    vacuum_every = 0 if _autovacuum_on() else args.vacuum_every
    if vacuum_every:
        print(
            f"autovacuum is off on this PostgreSQL server: the soak runs VACUUM on its schema "
            f"every {vacuum_every} rounds in its place",
            flush=True,
        )
    try:
        for agent in agents:
            agent.start()
        started = time.monotonic()
        seen = 0
        last = -1  # the number of the newest round sampled: older ones leave the history
        while seen < args.rounds:
            ended = [(n, outcome) for n, outcome in _rounds_ended(store) if n > last]
            if not ended:
                if time.monotonic() - started > args.round_timeout:
                    raise TimeoutError(
                        f"no round ended in {args.round_timeout}s:\n{coordinator.log()[-4000:]}"
                    )
                time.sleep(0.5)
                continue
            for number, outcome in ended:
                last = number
                seen += 1
                assert coordinator.process is not None
                pid = coordinator.process.pid
                sample = Sample(
                    round=seen,
                    outcome=outcome,
                    seconds=round(time.monotonic() - started, 2),
                    rss_bytes=_rss(pid),
                    open_fds=_fds(pid),
                    database_bytes=_database_bytes(schema),
                    blob_bytes=_tree_bytes(coordinator.data_dir / "blobs"),
                    spool_bytes=_tree_bytes(coordinator.data_dir / "spool"),
                )
                samples.append(sample)
                started = time.monotonic()
                print(
                    f"round {seen:4d} {sample.outcome:9s} {sample.seconds:6.1f}s  "
                    f"rss {sample.rss_bytes / 2**20:6.1f} MiB  fds {sample.open_fds:4d}  "
                    f"db {sample.database_bytes / 2**20:6.2f} MiB  "
                    f"blobs {sample.blob_bytes / 2**20:6.2f} MiB  "
                    f"spool {sample.spool_bytes / 2**10:7.1f} KiB",
                    flush=True,
                )
                if vacuum_every and seen % vacuum_every == 0:
                    _vacuum(schema)
                if seen % args.restart_every == 0 and seen < args.rounds:
                    coordinator.kill(signal.SIGKILL)
                    coordinator.start()
                    restarts += 1
                if rng.random() < args.kill_rate:
                    victim = rng.choice(agents)
                    victim.kill()
                    victim.start()
                    kills += 1
            for agent in agents:
                if not agent.running:
                    raise RuntimeError(f"an agent exited on its own:\n{agent.log()[-3000:]}")
    finally:
        for agent in agents:
            agent.stop()
        coordinator.stop()
        store.close()
        drop_postgres_schema(schema)
    print(f"{len(samples)} rounds, {restarts} coordinator restarts (SIGKILL), {kills} agent kills")
    return samples


def _slope_per_100(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return 100 * num / den


def summarize(samples: Sequence[Sample]) -> bool:
    """Print one line per quantity; True if every one is flat (see the module docstring)."""
    quarter = max(1, len(samples) // 4)
    flat = True
    for name in QUANTITIES:
        values = [float(getattr(s, name)) for s in samples]
        first = sum(values[:quarter]) / quarter
        last = sum(values[-quarter:]) / quarter
        ok = (
            last <= max(first * 1.25, first + 8 * 2**20)
            if name != "open_fds"
            else last <= first * 1.25 + 8
        )
        flat &= ok
        print(
            f"{name:15s} first quarter {first:14,.0f}  last quarter {last:14,.0f}  "
            f"slope {_slope_per_100(values):+12,.0f} per 100 rounds  {'flat' if ok else 'GROWS'}"
        )
    return flat


def plot(samples: Sequence[Sample], path: Path, *, restarts: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(QUANTITIES), 1, figsize=(8, 11), sharex=True)
    rounds = [s.round for s in samples]
    units = {"open_fds": 1, "rss_bytes": 2**20, "database_bytes": 2**20}
    for axis, name in zip(axes, QUANTITIES, strict=True):
        scale = units.get(name, 2**20)
        axis.plot(rounds, [getattr(s, name) / scale for s in samples], lw=1)
        axis.set_ylabel(name.replace("_bytes", " (MiB)").replace("_", " "))
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("round")
    faults = "agent kills and coordinator restarts" if restarts else "agent kills, no restarts"
    fig.suptitle(f"Soak: coordinator resources per round (PostgreSQL, {faults})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.soak", description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--restart-every", type=int, default=50)
    parser.add_argument("--kill-rate", type=float, default=0.15)
    parser.add_argument("--round-timeout", type=float, default=300.0)
    parser.add_argument(
        "--vacuum-every",
        type=int,
        default=10,
        help="where the server's autovacuum is off, VACUUM the schema every N rounds in its "
        "place (0: never); default 10",
    )
    parser.add_argument(
        "--keep-rounds",
        type=int,
        default=50,
        help="[retention] keep_rounds of the coordinator: the round history it keeps, so the "
        "database levels off once that many rounds have ended; default 50",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/soak")
    parser.add_argument("--quick", action="store_true", help="20 rounds, a restart every 10")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.restart_every = 20, 10
    if args.rounds < 4 or args.agents < 4 or args.restart_every < 1 or args.keep_rounds < 1:
        parser.error(
            "need --rounds >= 4, --agents >= 4, --restart-every >= 1 and --keep-rounds >= 1"
        )
    samples = soak(args)
    out = Path(args.out)
    with (out / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(samples[0])))
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)
    plot(samples, out / "soak.png", restarts=args.restart_every < args.rounds)
    flat = summarize(samples)
    print(f"wrote {out / 'samples.csv'} and {out / 'soak.png'}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())

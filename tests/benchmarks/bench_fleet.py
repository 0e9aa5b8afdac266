"""A fleet of simulated agents long-polling one coordinator: latency, errors and its cost.

A real coordinator (``fedadamw-coordinator run``, mutual TLS, SQLite by default) serves
``N`` simulated agents. Each one is, on the wire, what a real agent is to the coordinator
while it waits for a round:

- it enrolled with a token of its own (``Enroll``: its own Ed25519 identity and TLS key, so
  its own certificate), through ``edge_client.enrollment.enroll``;
- it holds one mutual-TLS channel of its own (``mutual_tls_channel``, the agent's options);
- it long-polls ``CheckIn(wait_seconds=HOLD)`` and, on a ``RetryAfter``, pauses as the
  answer says, as ``edge_client.agent`` does; and every ``--heartbeat`` seconds it calls
  ``Heartbeat`` on the same channel.

No round starts (the cohort is above the fleet), so every check-in is held for the hold.
The agents run in ``--workers`` processes of this module (``--worker``), which the
benchmark starts. The figures, over a window of ``--window`` seconds once every agent is
connected and has been held once:

- check-in latency past the hold (p50, p99, max) and heartbeat latency;
- errors, by status code, and calls in all;
- the coordinator's CPU (share of one core), RSS and open file descriptors;
- how long enrolling the fleet took;
- the workers' event-loop lag (p99), which says how much of a latency is the load
  generator's own: on two shared cores the workers and the coordinator compete.

Each size in ``--sizes`` runs against a freshly started coordinator on the same database
(the fleet enrolls once, for the largest size). A size breaks when its check-in p99 past
the hold exceeds 1 s, its heartbeat p99 100 ms, or a call fails.

    python -m tests.benchmarks fleet [--quick]
    python -m tests.benchmarks.bench_fleet --sizes 1000 3000 10000 [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from edge_client.enrollment import Credentials, enroll, mutual_tls_channel
from tests.e2e.harness import Coordinator, merged
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

SIZES = (1_000, 3_000, 10_000)
QUICK_SIZES = (300,)
HOLD = 20.0
TASK = "digits-cnn"
NEVER = 1_000_000  # a cohort no fleet here reaches: no round starts
CONFIG = merged(
    {},
    task=TASK,
    rounds=1,
    cohort=NEVER,
    min_clients=NEVER,
    limits={"checkin_wait": HOLD, "rate_per_second": 50},
)
CHECKIN_TARGET = 1.0  # seconds past the hold, p99
HEARTBEAT_TARGET = 0.1  # seconds, p99
ENROLL_CONCURRENCY = 16


# --- the worker: a share of the fleet in one process -------------------------------------------


def _save(path: Path, credentials: list[Credentials]) -> None:
    from cryptography.hazmat.primitives import serialization

    raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw
    rows = [
        {
            "client_id": c.client_id,
            "identity_key": base64.b64encode(
                c.identity_key.private_bytes(*raw, serialization.NoEncryption())
            ).decode(),
            "tls_key_pem": base64.b64encode(c.tls_key_pem).decode(),
            "certificate_pem": base64.b64encode(c.certificate_pem).decode(),
        }
        for c in credentials
    ]
    path.write_text(json.dumps(rows))


def _load(path: Path, ca_pem: bytes) -> list[Credentials]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return [
        Credentials(
            client_id=row["client_id"],
            identity_key=Ed25519PrivateKey.from_private_bytes(
                base64.b64decode(row["identity_key"])
            ),
            tls_key_pem=base64.b64decode(row["tls_key_pem"]),
            certificate_pem=base64.b64decode(row["certificate_pem"]),
            ca_certificate_pem=ca_pem,
        )
        for row in json.loads(path.read_text())
    ]


async def _enroll_share(args: argparse.Namespace) -> dict[str, Any]:
    tokens = Path(args.tokens).read_text().split()
    ca_pem = Path(args.ca).read_bytes()
    gate = asyncio.Semaphore(ENROLL_CONCURRENCY)
    done: list[Credentials] = []

    async def one(token: str) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    done.append(
                        await enroll(
                            address=args.enroll_address,
                            ca_certificate_pem=ca_pem,
                            token=token,
                            label="fleet",
                            timeout=60,
                        )
                    )
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is not grpc.StatusCode.UNAVAILABLE or attempt == 4:
                        raise
                    await asyncio.sleep(1 + attempt)

    started = time.monotonic()
    await asyncio.gather(*(one(t) for t in tokens))
    _save(Path(args.out), done)
    return {"enrolled": len(done), "seconds": time.monotonic() - started}


class _Calls:
    """Latencies of the calls that started inside the window, and every error."""

    def __init__(self, window: tuple[float, float]) -> None:
        self.window = window
        self.checkin: list[float] = []  # seconds past the hold
        self.heartbeat: list[float] = []
        self.errors: dict[str, int] = {}
        self.details: dict[str, list[str]] = {}  # a few distinct messages per status code
        self.calls = 0

    def inside(self, started: float) -> bool:
        return self.window[0] <= started < self.window[1]

    def error(self, started: float, exc: grpc.aio.AioRpcError) -> None:
        if self.inside(started):
            code = exc.code().name
            self.errors[code] = self.errors.get(code, 0) + 1
            seen = self.details.setdefault(code, [])
            detail = f"{exc.details()} ({exc.debug_error_string()})"  # who ended it, and where
            if len(seen) < 3 and detail not in seen:
                seen.append(detail)


async def _simulated_agent(
    credentials: Credentials,
    address: str,
    connect_at: float,
    heartbeat: float,
    calls: _Calls,
    stop_at: float,
) -> None:
    await asyncio.sleep(max(0.0, connect_at - time.monotonic()))
    channel = mutual_tls_channel(address, credentials)
    stub = pb_grpc.EdgeServiceStub(channel)

    async def heartbeats() -> None:
        await asyncio.sleep(random.uniform(0, heartbeat))
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                await stub.Heartbeat(pb.HeartbeatRequest(), timeout=30)
                if calls.inside(started):
                    calls.heartbeat.append(time.monotonic() - started)
                    calls.calls += 1
            except grpc.aio.AioRpcError as exc:
                calls.error(started, exc)
            await asyncio.sleep(heartbeat)

    beating = asyncio.ensure_future(heartbeats())
    try:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            request = pb.CheckInRequest(task=TASK, wait_seconds=int(HOLD))
            try:
                answer = await stub.CheckIn(request, timeout=HOLD + 40)
            except grpc.aio.AioRpcError as exc:
                calls.error(started, exc)
                await asyncio.sleep(1.0)
                continue
            if calls.inside(started):
                calls.checkin.append(time.monotonic() - started - HOLD)
                calls.calls += 1
            await asyncio.sleep(min(float(answer.retry_after_seconds or 1), 60.0))
    finally:
        beating.cancel()
        await channel.close(grace=None)


async def _lag_probe(lags: list[float], stop_at: float) -> None:
    """How late the worker's event loop wakes a 50 ms sleep: the load generator's own delay."""
    while time.monotonic() < stop_at:
        started = time.monotonic()
        await asyncio.sleep(0.05)
        lags.append(time.monotonic() - started - 0.05)


async def _run_share(args: argparse.Namespace) -> dict[str, Any]:
    credentials = _load(Path(args.credentials), Path(args.ca).read_bytes())
    start = time.monotonic() + 1.0
    ramp = args.ramp
    window = (start + ramp + HOLD + 2.0, start + ramp + HOLD + 2.0 + args.window)
    stop_at = window[1]
    calls = _Calls(window)
    lags: list[float] = []
    count = len(credentials)
    agents = [
        _simulated_agent(
            c,
            args.address,
            start + ramp * i / max(1, count),
            args.heartbeat,
            calls,
            stop_at,
        )
        for i, c in enumerate(credentials)
    ]
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(_lag_probe(lags, stop_at), *agents)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "checkin": calls.checkin,
        "heartbeat": calls.heartbeat,
        "errors": calls.errors,
        "details": calls.details,
        "calls": calls.calls,
        "lag_p99": _quantile(lags, 0.99),  # through the ramp too: connecting costs the most
        "cpu_seconds": cpu,
        "seconds": stop_at - start,
    }


def _worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("enroll", "run"), required=True)
    parser.add_argument("--tokens")
    parser.add_argument("--credentials")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--address")
    parser.add_argument("--enroll-address")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ramp", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--heartbeat", type=float, default=10.0)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per simulated agent
    if args.mode == "enroll":
        result = asyncio.run(_enroll_share(args))
        Path(args.out + ".json").write_text(json.dumps(result))
    else:
        result = asyncio.run(_run_share(args))
        Path(args.out).write_text(json.dumps(result))
    return 0


# --- the benchmark -------------------------------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _ProcessSampler:
    """CPU, RSS and open file descriptors of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss: list[int] = []
        self.fds: list[int] = []
        self._cpu0 = self.cpu_seconds()
        self._t0 = time.monotonic()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                self.rss.append(int(line.split()[1]) * 1024)
        self.fds.append(len(os.listdir(f"/proc/{self.pid}/fd")))

    def restart(self) -> None:
        self._cpu0, self._t0 = self.cpu_seconds(), time.monotonic()
        self.rss.clear()
        self.fds.clear()

    def core_share(self) -> float:
        return (self.cpu_seconds() - self._cpu0) / max(1e-9, time.monotonic() - self._t0)


def _served(coordinator: Coordinator) -> dict[str, float]:
    """The coordinator's own count of calls by status code (``fedadamw_grpc_requests_total``)."""
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    counts: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("fedadamw_grpc_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                code = labels.split('code="', 1)[1].split('"', 1)[0]
                counts[code] = counts.get(code, 0.0) + float(value)
    return counts


def _split(items: Sequence[str], parts: int) -> list[list[str]]:
    return [list(items[i::parts]) for i in range(parts)]


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    module = "tests.benchmarks.bench_fleet"
    return subprocess.Popen([sys.executable, "-m", module, "--worker", *args])


def _wait_all(processes: list[subprocess.Popen[bytes]], what: str) -> None:
    codes = [p.wait() for p in processes]
    if any(codes):
        raise RuntimeError(f"{what}: worker exit codes {codes}")


def _enroll_fleet(
    coordinator: Coordinator, count: int, workers: int, root: Path
) -> tuple[list[Path], float]:
    ca = root / "ca.pem"
    ca.write_bytes(coordinator.ca_pem)
    tokens: list[str] = []
    while len(tokens) < count:
        tokens += coordinator.tokens(min(5_000, count - len(tokens)), ttl="24h")
    started = time.monotonic()
    outs = []
    processes = []
    for i, share in enumerate(_split(tokens, workers)):
        (root / f"tokens-{i}").write_text("\n".join(share))
        out = root / f"credentials-{i}"
        outs.append(out)
        enroll_args = ["--mode", "enroll", "--tokens", str(root / f"tokens-{i}"), "--ca", str(ca)]
        enroll_args += ["--enroll-address", coordinator.enroll_address, "--out", str(out)]
        processes.append(_spawn(*enroll_args))
    _wait_all(processes, "enrollment")
    return outs, time.monotonic() - started


def _subset(files: list[Path], size: int, workers: int, root: Path) -> list[Path]:
    """The first ``size`` agents of the enrolled fleet, split over the workers."""
    rows = [row for f in files for row in json.loads(f.read_text())]
    rows.sort(key=lambda row: row["client_id"])
    chosen = rows[:size]
    out = []
    for i in range(workers):
        path = root / f"fleet-{size}-{i}"
        path.write_text(json.dumps(chosen[i::workers]))
        out.append(path)
    return out


def _start(coordinator: Coordinator, source: Path | None) -> None:
    """Start the coordinator, from the checkout at ``source`` if given (a before-and-after
    comparison in one run: ``git worktree add /tmp/before REV``)."""
    saved = os.environ.get("PYTHONPATH")
    if source is not None:
        os.environ["PYTHONPATH"] = str(source)
    try:
        coordinator.start(timeout=120)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _run_size(
    coordinator: Coordinator,
    files: list[Path],
    size: int,
    args: argparse.Namespace,
    root: Path,
    source: Path | None,
) -> dict[str, Any]:
    coordinator.stop()
    _start(coordinator, source)
    assert coordinator.process is not None
    sampler = _ProcessSampler(coordinator.process.pid)
    ramp = max(10.0, size / args.connect_rate)
    outs = []
    processes = []
    for i, share in enumerate(_subset(files, size, args.workers, root)):
        out = root / f"result-{size}-{i}.json"
        outs.append(out)
        run_args = ["--mode", "run", "--credentials", str(share), "--ca", str(root / "ca.pem")]
        run_args += ["--address", coordinator.address, "--out", str(out), "--ramp", str(ramp)]
        run_args += ["--window", str(args.window), "--heartbeat", str(args.heartbeat)]
        processes.append(_spawn(*run_args))
    window_starts = time.monotonic() + 1.0 + ramp + HOLD + 2.0
    window_ends = window_starts + args.window
    while time.monotonic() < window_starts:
        time.sleep(0.5)
        sampler.sample()
    connected_rss = max(sampler.rss)
    sampler.restart()
    served_before = _served(coordinator)
    while time.monotonic() < window_ends:
        time.sleep(2.0)
        sampler.sample()
    core = sampler.core_share()
    served_after = _served(coordinator)
    served = {
        code: served_after[code] - served_before.get(code, 0.0)
        for code in served_after
        if served_after[code] > served_before.get(code, 0.0)
    }
    _wait_all(processes, f"fleet of {size}")
    results = [json.loads(out.read_text()) for out in outs]
    checkin = [x for r in results for x in r["checkin"]]
    heartbeat = [x for r in results for x in r["heartbeat"]]
    errors: dict[str, int] = {}
    details: dict[str, list[str]] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
        for code, messages in r["details"].items():
            details.setdefault(code, []).extend(m for m in messages if m not in details[code])
    return {
        "agents": size,
        "coordinator": str(source) if source is not None else "this checkout",
        "ramp_s": ramp,
        "calls": sum(r["calls"] for r in results),
        "checkins": len(checkin),
        "checkin_p50": _quantile(checkin, 0.50),
        "checkin_p99": _quantile(checkin, 0.99),
        "checkin_max": max(checkin, default=float("nan")),
        "heartbeats": len(heartbeat),
        "heartbeat_p50": _quantile(heartbeat, 0.50),
        "heartbeat_p99": _quantile(heartbeat, 0.99),
        "heartbeat_max": max(heartbeat, default=float("nan")),
        "errors": errors,
        "error_details": details,
        "served_by_code": served,  # the coordinator's own count, over about the same window
        "coordinator_core": core,
        "coordinator_rss_mb": max(max(sampler.rss, default=0), connected_rss) / 2**20,
        "coordinator_fds": max(sampler.fds, default=0),
        "worker_core": sum(r["cpu_seconds"] / r["seconds"] for r in results),
        "worker_lag_p99": max(r["lag_p99"] for r in results),
    }


def _verdict(row: dict[str, Any]) -> str:
    misses = []
    if not row["checkin_p99"] < CHECKIN_TARGET:
        misses.append("check-in p99")
    if not row["heartbeat_p99"] < HEARTBEAT_TARGET:
        misses.append("heartbeat p99")
    if row["errors"]:
        misses.append("errors")
    return "ok" if not misses else "missed: " + ", ".join(misses)


def _print(rows: list[dict[str, Any]], enroll_seconds: float, enrolled: int) -> None:
    rate = enrolled / enroll_seconds
    print(f"\nenrolled {enrolled} agents in {enroll_seconds:.1f}s ({rate:.0f} per second)")
    head = (
        "| coordinator | agents | calls | check-in past hold p50 / p99 / max (s) "
        "| heartbeat p50 / p99 / max (ms) | errors | coordinator core | RSS MB | fds "
        "| workers' cores | worker lag p99 (ms) | verdict |"
    )
    print(head)
    print("|---" + "|---:" * 10 + "|---|")
    for r in rows:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        print(
            f"| {r['coordinator']} | {r['agents']:,} | {r['calls']:,} "
            f"| {r['checkin_p50']:.3f} / {r['checkin_p99']:.3f} / {r['checkin_max']:.3f} "
            f"| {1e3 * r['heartbeat_p50']:.1f} / {1e3 * r['heartbeat_p99']:.1f} / "
            f"{1e3 * r['heartbeat_max']:.1f} | {errors} | {r['coordinator_core']:.0%} "
            f"| {r['coordinator_rss_mb']:.0f} | {r['coordinator_fds']:,} | {r['worker_core']:.2f} "
            f"| {1e3 * r['worker_lag_p99']:.0f} | {_verdict(r)} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between them")
    parser.add_argument(
        "--connect-rate", type=float, default=200.0, help="agents connecting per second"
    )
    parser.add_argument("--db", help="database URL (default: SQLite in the data directory)")
    parser.add_argument(
        "--compare",
        type=Path,
        help="also run each size against the coordinator of this checkout (a git worktree "
        "of an earlier commit), after this one's, on the same fleet and database",
    )
    parser.add_argument("--out", type=Path, help="keep the run here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZES}, a 30 s window")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.window = list(QUICK_SIZES), 30.0
    if any(size < 1 for size in args.sizes) or args.workers < 1:
        parser.error("--sizes and --workers must be at least 1")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < max(args.sizes) + 1024:
        print(
            f"fleet: the open-files limit ({hard}) is below the fleet of {max(args.sizes)} "
            "plus 1,024; raise `ulimit -Hn` or pass smaller --sizes",
            file=sys.stderr,
        )
        return 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the coordinator inherits it
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        coordinator = Coordinator(root, CONFIG, db_url=args.db)
        _start(coordinator, None)
        try:
            enrolled = max(args.sizes)
            print(f"enrolling {enrolled} agents through {args.workers} workers", flush=True)
            files, enroll_seconds = _enroll_fleet(coordinator, enrolled, args.workers, root)
            print(f"enrolled in {enroll_seconds:.1f}s", flush=True)
            rows = []
            for size in sorted(args.sizes):
                print(f"fleet of {size}: connecting at {args.connect_rate:g}/s", flush=True)
                for source in (None, args.compare) if args.compare else (None,):
                    rows.append(_run_size(coordinator, files, size, args, root, source))
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            coordinator.stop()
        (root / "fleet.json").write_text(json.dumps(rows, indent=2))
    _print(rows, enroll_seconds, enrolled)
    return 0


if __name__ == "__main__":
    sys.exit(main())

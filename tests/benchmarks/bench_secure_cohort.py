"""A secure round at cohorts of 100 to 1,000 agents through a real coordinator: the time of
each phase and the coordinator's CPU in it.

For each cohort size ``n`` this starts a fresh coordinator (``fedadamw-coordinator run``,
SQLite, or with ``--postgres`` a fresh schema of the PostgreSQL the tests use,
``$FEDADAMW_TEST_PG_URL``, dropped afterwards; TLS and mutual TLS on loopback), enrolls ``n``
agents and runs one secure round (SecAgg+ on the k-regular graph that the coordinator
chooses at its default rates, d = 100,000 parameters, ``bench_ingest``'s one-vector task).
The agents are the real ``RoundSession``, each with its own channel, certificate and cache
directory, spread over ``--workers`` processes; they download x, ΔG and v̄, compute a fixed
synthetic update (``bench_ingest.SharedUpdate``: nothing is trained), and then quantize,
mask, upload and unmask as a device does. Nobody drops out.

Measured, per cohort size:

- each phase's wall time and the round's (selection excluded), as the coordinator stored
  them (``status --json``);
- the coordinator's CPU seconds in each phase: its ``/proc`` CPU time, sampled every 0.25 s
  together with the ``fedadamw_round_phase`` gauge, and each interval's CPU charged to the
  phase open at its end;
- the agents' CPU seconds (every worker's, over the round) and the outcomes they reported.

All of it runs on this machine's 2 shared cores, so the agents' work (``n`` times a
device's) competes with the coordinator's: a phase's wall time is both. Compare the
coordinator's CPU column across sizes.

    python -m tests.benchmarks secure-cohort [--quick]
    python -m tests.benchmarks.bench_secure_cohort [--sizes 100,300,1000] [--workers 3]
        [--postgres] [--profile DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PHASES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking")
PHASE_GAUGE = {1: "advertise_keys", 2: "share_keys", 3: "masked_input", 4: "consistency_check"}
PHASE_GAUGE[5] = "unmasking"
SIZES = (100, 300, 1000)
QUICK_SIZES = (20, 50)
TASK = "tests.benchmarks.bench_ingest:Ingest100K"
ENROLL_WORKERS = 4
SAMPLE_SECONDS = 0.25
MODULE = "tests.benchmarks.bench_secure_cohort"


# --- the agents, in worker processes ----------------------------------------------------------


async def _agent(credentials: Any, address: str, cache: Path, deadline: float) -> dict[str, Any]:
    import grpc

    from edge_client.enrollment import mutual_tls_channel
    from edge_client.session import RoundSession
    from tests.benchmarks.bench_ingest import SharedUpdate
    from wire.v1 import edge_pb2 as pb
    from wire.v1 import edge_pb2_grpc as pb_grpc

    channel = mutual_tls_channel(address, credentials)
    stub = pb_grpc.EdgeServiceStub(channel)
    try:
        while True:
            if time.monotonic() > deadline:
                return {"outcome": "never selected", "detail": ""}
            try:
                answer = await stub.CheckIn(
                    pb.CheckInRequest(task=TASK, wait_seconds=20), timeout=60
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    return {"outcome": "check-in refused", "detail": str(exc.details())}
                await asyncio.sleep(1.0)
                continue
            if answer.WhichOneof("answer") == "assignment":
                break
            await asyncio.sleep(min(answer.retry_after_seconds, 1.0))
        session = RoundSession(
            stub=stub,
            identity_key=credentials.identity_key,
            assignment=answer.assignment,
            compute=SharedUpdate().compute,
            cache_dir=cache,
        )
        result = await session.run()
        return {
            "outcome": result.outcome.value,
            "detail": result.reason,
            "timings": dict(session.timings),
        }
    finally:
        await channel.close()


async def _run_share(args: argparse.Namespace) -> dict[str, Any]:
    from tests.benchmarks.bench_fleet import _load

    credentials = _load(Path(args.credentials), Path(args.ca).read_bytes())
    deadline = time.monotonic() + args.timeout
    root = Path(args.cache)
    cpu = time.process_time()
    results = await asyncio.gather(
        *(_agent(c, args.address, root / f"agent-{c.client_id}", deadline) for c in credentials)
    )
    return {"agents": list(results), "cpu_seconds": time.process_time() - cpu}


def _worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--credentials", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per agent
    logging.basicConfig(
        filename=args.out + ".log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    Path(args.out).write_text(json.dumps(asyncio.run(_run_share(args))))
    return 0


# --- the coordinator's side ---------------------------------------------------------------------


def _metrics(port: int) -> list[tuple[str, str, float]]:
    """(name, labels, value) of every sample the coordinator serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        samples.append((name, labels.rstrip("}"), float(value)))
    return samples


class _PhaseCpu(threading.Thread):
    """The coordinator's CPU seconds charged to the round phase open at each sample."""

    def __init__(self, pid: int, metrics_port: int) -> None:
        from tests.benchmarks.bench_fleet import _ProcessSampler

        super().__init__(daemon=True)
        self.process = _ProcessSampler(pid)
        self.metrics_port = metrics_port
        self.cpu: dict[str, float] = {}
        self._done = threading.Event()

    @property
    def peak_rss(self) -> int:
        return max(self.process.rss, default=0)

    def run(self) -> None:
        last = self.process.cpu_seconds()
        while not self._done.wait(SAMPLE_SECONDS):
            try:
                gauge = next(
                    v for n, _, v in _metrics(self.metrics_port) if n == "fedadamw_round_phase"
                )
                now = self.process.cpu_seconds()
                self.process.sample()
            except (OSError, StopIteration):
                continue  # the process ended, or the scrape timed out: the next sample has it
            phase = PHASE_GAUGE.get(int(gauge), "outside a round")
            self.cpu[phase] = self.cpu.get(phase, 0.0) + now - last
            last = now

    def stop(self) -> None:
        self._done.set()
        self.join()


def _settings(n: int) -> dict[str, Any]:
    from tests.e2e.harness import FAST, merged

    long = 1800 if n > 300 else 600
    return merged(
        FAST,
        task=TASK,
        rounds=1,
        cohort=n,
        min_clients=n,
        over_selection=0.0,
        secure_aggregation={"enabled": True, "degree": 0, "threshold": 0},
        deadlines={
            "selection": 120,
            "advertise_keys": long,
            "share_keys": long,
            "masked_input": long,
            "consistency_check": long,
            "unmasking": long,
            "restart_grace": 60,
        },
        limits={"chunk_elements": 262_144, "checkin_wait": 20, "rate_per_second": 10_000},
    )


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", MODULE, "--worker", *args])


def _profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the coordinator into collapsed stacks (``--profile``)."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise SystemExit(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")
    command = [str(py_spy), "record", "--pid", str(pid), "--rate", "50", "--format", "raw"]
    return subprocess.Popen([*command, "--output", str(out), "--nonblocking"])


def measure(
    n: int, workers: int, postgres: bool, root: Path, timeout: float, profile: Path | None
) -> dict[str, Any]:
    from tests.benchmarks.bench_fleet import _enroll_fleet, _subset
    from tests.e2e.harness import Coordinator, drop_postgres_schema, postgres_url_for_schema

    root.mkdir(parents=True)
    schema = f"secure_cohort_{os.getpid()}_{n}"
    db = postgres_url_for_schema(schema) if postgres else None
    coordinator = Coordinator(root, _settings(n), db_url=db)
    try:
        coordinator.start(timeout=120)
        assert coordinator.process is not None
        files, enroll_s = _enroll_fleet(coordinator, n, min(ENROLL_WORKERS, workers), root)
        shares = _subset(files, n, workers, root)
        sampler = _PhaseCpu(coordinator.process.pid, coordinator.metrics_port)
        sampler.start()
        spy = None if profile is None else _profiler(coordinator.process.pid, profile)
        started = time.monotonic()
        outs, processes = [], []
        for i, share in enumerate(shares):
            out = root / f"result-{i}.json"
            outs.append(out)
            processes.append(
                _spawn(
                    "--credentials", str(share), "--ca", str(root / "ca.pem"),
                    "--address", coordinator.address, "--cache", str(root / "agents"),
                    "--out", str(out), "--timeout", str(timeout),
                )
            )  # fmt: skip
        codes = [p.wait() for p in processes]
        wall = time.monotonic() - started
        sampler.stop()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(timeout=60)
        if any(codes):
            raise RuntimeError(f"cohort {n}: agent worker exit codes {codes}")
        results = [json.loads(out.read_text()) for out in outs]
        status = coordinator.status()
    finally:
        coordinator.stop()
        if postgres:
            drop_postgres_schema(schema)
    outcomes: dict[str, int] = {}
    details: set[str] = set()
    for r in results:
        for agent in r["agents"]:
            outcomes[agent["outcome"]] = outcomes.get(agent["outcome"], 0) + 1
            if agent["outcome"] != "committed" and agent["detail"]:
                details.add(agent["detail"])
    rounds = status.get("rounds") or [{}]
    last = rounds[0]
    phase_s = {p["phase"]: p["seconds"] for p in last.get("phases", [])}
    session = last.get("secure_aggregation") or {}
    return {
        "n": n,
        "k": session.get("degree"),
        "t": session.get("threshold"),
        "round_state": last.get("outcome"),
        "round_s": last.get("duration_seconds"),
        "phase_s": phase_s,
        "coordinator_cpu": sampler.cpu,
        "coordinator_peak_rss_mb": sampler.peak_rss / 2**20,
        "agents_cpu": sum(r["cpu_seconds"] for r in results),
        "outcomes": outcomes,
        "details": sorted(details)[:5],
        "enroll_s": enroll_s,
        "wall_s": wall,
    }


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    header = ["n", "k", "t", *PHASES, "round s", "coordinator CPU s", "agents CPU s", "outcome"]
    print("Wall seconds per phase (coordinator CPU seconds in it):\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cpu = row["coordinator_cpu"]
        cells = [str(row["n"]), "complete" if row["k"] is None else str(row["k"]), str(row["t"])]
        cells += [f"{_cell(row['phase_s'].get(p))} ({cpu.get(p, 0.0):.1f})" for p in PHASES]
        cells += [
            _cell(row["round_s"]),
            f"{sum(cpu.get(p, 0.0) for p in PHASES):.1f}",
            f"{row['agents_cpu']:.0f}",
            ", ".join(f"{count} {what}" for what, count in sorted(row["outcomes"].items())),
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    for row in rows:
        print(
            f"n = {row['n']}: round {row['round_state']}, enrolled in {row['enroll_s']:.1f} s, "
            f"{row['wall_s']:.0f} s from the agents' start to their end, coordinator peak RSS "
            f"{row['coordinator_peak_rss_mb']:.0f} MB, CPU outside the round "
            f"{row['coordinator_cpu'].get('outside a round', 0.0):.1f} s"
        )
        for detail in row["details"]:
            print(f"    {detail}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks secure-cohort",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=_ints, default=list(SIZES), help="cohort sizes")
    parser.add_argument("--workers", type=int, default=3, help="agent processes")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="the coordinator on PostgreSQL ($FEDADAMW_TEST_PG_URL, a fresh schema per size)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for one round")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="a directory for py-spy profiles of the coordinator (collapsed stacks per size)",
    )
    parser.add_argument("--quick", action="store_true", help=f"cohorts {QUICK_SIZES}")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    sizes = list(QUICK_SIZES) if args.quick else args.sizes
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(
        f"Secure round by cohort: d = 100,000, {'PostgreSQL' if args.postgres else 'SQLite'}, "
        f"{args.workers} agent "
        f"processes, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at start",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="secure-cohort-") as tmp:
        for n in sizes:
            profile = None
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile = args.profile / f"coordinator-n{n}.txt"
            row = measure(
                n, args.workers, args.postgres, Path(tmp) / f"n{n}", args.timeout, profile
            )
            rows.append(row)
            print(
                f"  n = {n}: {row['round_state']} in {_cell(row['round_s'])} s, {row['outcomes']}",
                flush=True,
            )
    print()
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["round_state"] == "committed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Coordinator ingest: masked uploads from many concurrent agents into a real coordinator.

For each model size ``d`` and cohort size ``n`` this starts a fresh coordinator
(``fedadamw-coordinator run`` in a subprocess, SQLite, TLS and mutual TLS, the e2e
harness), enrolls ``n`` test agents in this process (``TestAgent.many``) and runs one
round twice: with secure aggregation (SecAgg+ on a k-regular graph) and with
``[secure_aggregation] enabled = false`` (plain sums), each on its own coordinator.

The task is a single vector of ``d`` parameters (``Ingest100K``, ``Ingest1M``,
``Ingest10M`` below, named ``tests.benchmarks.bench_ingest:Ingest1M`` and so on), so the
ring vector an agent uploads holds ``2d + 4`` elements in the default ``full`` block mode
(deltas, the whole v̄, weight, sample count, training loss, clip count), 4 bytes each.
The agents are the real ``RoundSession`` with three test changes:

- they do not download the model, ΔG and v̄ (they compute nothing; ``--download`` keeps the
  agent's own download, which needs 2·n·d·4 bytes of memory and disk here);
- they upload the same quantized update (one random vector, quantized once), each masked
  with its own masks by the real ``secure_agg`` client;
- they wait at a barrier until all ``n`` hold their masked (or plain) vector, then all
  upload at once through the agent's own upload path (chunks of ``chunk_elements``).

Measured, per row:

- **ingest s**, on the coordinator's side: ``fedadamw_received_bytes_total{kind=
  "masked_input"}`` (counted once a chunk is written to the spool, fsynced and its receipt
  committed) is scraped every 0.1 s; ingest s runs from the last scrape at 0 bytes to the
  first at the full payload, so it spans the first chunk received to the last chunk
  durable, plus up to 0.2 s. **MB/s** is the masked-input payload (n × ring length × 4
  bytes, MB = 10^6) over it. ``agents ingest`` is the same upload timed by the agents: from
  the barrier's release to the last ``UploadMaskedInput`` answer saying an input is
  complete (its chunks read back from the spool and summed); it also holds the agents'
  start (each copies its vector to bytes before its stream opens, in this one process) and
  the completion of the last inputs.
- **round s**: the coordinator's round duration (``status --json`` ``duration_seconds``,
  from selection to commit). **clients** is the part of it this process spends preparing
  the n updates (from the first masked-input event an agent gets to the barrier's release:
  quantizing once, then n maskings of k + 1 PRG expansions each, one after another on the
  agents' shared event loop; real agents would mask in parallel). **coord** is round s
  minus clients. The secure/plain ratio is given for both.
- **peak RSS**: the coordinator process's ``VmHWM`` from ``/proc/PID/status`` after the round
  (its peak over its whole life, startup and commit included). The memory table adds
  ``VmRSS`` after startup (idle) and the largest ``VmRSS`` sampled during the uploads
  (every 0.1 s). The design asks for O(d) memory, flat in n.

Timings come from a 2-core machine shared with other work and with the agents themselves
(the agents' gRPC, TLS and masking compete with the coordinator for the same cores), so
compare ratios taken in the same run.

    python -m tests.benchmarks.bench_ingest [--quick] [--sizes 1000000,10000000]
        [--clients 20,100] [--degree 8] [--threshold 5] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from fedadamw.tasks import ClientData, ClientDataSpec, Task, TensorClientData
from secure_agg.threshold import DEFAULT_CORRUPT_RATE, required_threshold

if TYPE_CHECKING:
    from edge_client.session import RoundInputs, RoundResult, RoundSession
    from tests.e2e.harness import Coordinator
    from wire.v1 import edge_pb2 as pb


# --- the tasks: one vector of d parameters, nothing to train, nothing to evaluate -------


class _Vector(nn.Module):
    def __init__(self, size: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(size, generator=generator) * 0.01)

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs * self.weight


class IngestTask(Task):
    """A model of ``size`` parameters in one tensor; the coordinator only needs its shape."""

    size: int = 0
    description = "ingest benchmark: one vector of parameters, no data"

    def build_model(self, *, seed: int) -> nn.Module:
        return _Vector(self.size, seed)

    def client_data(self, spec: ClientDataSpec) -> ClientData:
        return TensorClientData(torch.zeros(1, 1), torch.zeros(1, 1))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.mean((outputs - targets) ** 2)


class Ingest100K(IngestTask):
    size = 100_000


class Ingest1M(IngestTask):
    size = 1_000_000


class Ingest10M(IngestTask):
    size = 10_000_000


TASKS: dict[int, type[IngestTask]] = {t.size: t for t in (Ingest100K, Ingest1M, Ingest10M)}


def _task_name(size: int) -> str:
    if size not in TASKS:
        raise SystemExit(f"no ingest task of size {size}; choose from {sorted(TASKS)}")
    return f"tests.benchmarks.bench_ingest:{TASKS[size].__name__}"


# --- the agents' side ---------------------------------------------------------------------


@dataclass
class Barrier:
    """Holds every agent's upload until all ``n`` are ready, and notes the times."""

    n: int
    timeout: float
    arrived: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first_event: float | None = None  # first PHASE_MASKED_INPUT event an agent saw
    released: float | None = None
    done: list[float] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # the round's k and t

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.n:
            self.released = time.perf_counter()
            self.release.set()
        try:
            await asyncio.wait_for(self.release.wait(), timeout=self.timeout)
        except TimeoutError:  # an agent never got here; upload anyway, the row says so
            if self.released is None:
                self.released = time.perf_counter()
                self.release.set()


class SharedUpdate:
    """One fixed random update, quantized once for the round's layout and shared.

    Every agent's ``_encode`` returns the same ring vector; ``mask`` copies it, so each
    agent still uploads its own masked vector.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._lock = threading.Lock()
        self._encoded: np.ndarray | None = None

    def compute(self, inputs: RoundInputs) -> dict[str, np.ndarray]:
        from secure_agg import SegmentLayout

        layout = SegmentLayout.from_dict(json.loads(inputs.config.quantization_json))
        rng = np.random.default_rng(self.seed)
        values: dict[str, np.ndarray] = {}
        for segment in layout.segments:
            if segment.is_clip_counter:
                continue
            if segment.name == "weight":
                values[segment.name] = np.ones(1)
                continue
            middle, half = (segment.low + segment.high) / 2, (segment.high - segment.low) / 4
            values[segment.name] = rng.uniform(middle - half, middle + half, size=segment.length)
        return values


def session_class(barrier: Barrier, update: SharedUpdate, *, download: bool) -> type[RoundSession]:
    """A ``RoundSession`` that skips the downloads (unless ``download``), shares the
    quantized update and holds its upload at ``barrier``."""
    from edge_client.session import RoundInputs, RoundSession
    from secure_agg import SegmentLayout, SessionConfig
    from wire.v1 import edge_pb2 as pb

    class BenchSession(RoundSession):
        async def _download_all(self, config: pb.RoundConfig) -> RoundInputs:
            if download:
                return await super()._download_all(config)
            empty = np.empty(0, dtype=np.float32)
            return RoundInputs(
                config=config,
                model=empty,
                global_update=empty,
                second_moment=np.empty(0, dtype=np.float64),
            )

        async def _on_event(
            self,
            event: pb.RoundEvent,
            config: pb.RoundConfig,
            layout: Any,
            downloads: asyncio.Future[RoundInputs],
        ) -> RoundResult | None:
            if event.phase == pb.PHASE_MASKED_INPUT and barrier.first_event is None:
                barrier.first_event = time.perf_counter()
            if not barrier.params:
                barrier.params["ring"] = SegmentLayout.from_dict(
                    json.loads(config.quantization_json)
                ).length
                if config.secure_aggregation:
                    session = SessionConfig.from_dict(json.loads(config.secagg_session_json))
                    barrier.params["k"] = session.params.degree
                    barrier.params["t"] = session.params.threshold
            return await super()._on_event(event, config, layout, downloads)

        def _encode(self, inputs: RoundInputs, layout: Any) -> np.ndarray:
            with update._lock:
                if update._encoded is None:
                    update._encoded = super()._encode(inputs, layout)
                return update._encoded

        async def _upload(self, config: pb.RoundConfig, vector: np.ndarray) -> None:
            await barrier.wait()
            await super()._upload(config, vector)
            barrier.done.append(time.perf_counter())

    return BenchSession


async def _run_agents(
    coordinator: Coordinator,
    root: Path,
    *,
    n: int,
    task: str,
    session_cls: type[RoundSession],
    compute: Any,
) -> tuple[list[RoundResult], float]:
    from tests.e2e.harness import TestAgent

    started = time.perf_counter()
    agents = await TestAgent.many(coordinator, root, n)
    enrolled = time.perf_counter() - started
    try:
        assignments = await asyncio.gather(
            *(a.assignment(task=task, timeout=300.0) for a in agents)
        )
        sessions = [
            a.session(assignment, compute, session_cls)
            for a, assignment in zip(agents, assignments, strict=True)
        ]
        results = await asyncio.gather(*(s.run() for s in sessions))
    finally:
        for a in agents:
            await a.close()
    return list(results), enrolled


# --- the coordinator's side ---------------------------------------------------------------


def _proc_kib(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


_RECEIVED = re.compile(r'^fedadamw_received_bytes_total\{kind="masked_input"\} (\S+)$', re.M)
_UNMASK = re.compile(r"^fedadamw_secagg_unmask_duration_seconds_sum (\S+)$", re.M)


class Sampler(threading.Thread):
    """Every ``interval`` s: the coordinator's VmRSS and its masked-input byte counter."""

    def __init__(self, pid: int, metrics_port: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.interval = interval
        self.stopped = threading.Event()
        self.rss: list[tuple[float, int]] = []  # (perf_counter, KiB)
        self.received: list[tuple[float, float]] = []  # (perf_counter, bytes)
        self.unmask_s = 0.0

    def sample(self) -> None:
        try:
            self.rss.append((time.perf_counter(), _proc_kib(self.pid, "VmRSS")))
            with urllib.request.urlopen(self.url, timeout=5) as answer:
                text = answer.read().decode()
        except (OSError, ValueError):
            return
        match = _RECEIVED.search(text)
        self.received.append((time.perf_counter(), float(match.group(1)) if match else 0.0))
        if unmask := _UNMASK.search(text):
            self.unmask_s = float(unmask.group(1))

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval)

    def finish(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()

    def ingest_window(self, total: float) -> float | None:
        """From the last scrape at 0 bytes to the first at ``total``."""
        last_zero = next((t for t, b in reversed(self.received) if b == 0), None)
        full = next((t for t, b in self.received if b >= total), None)
        if last_zero is None or full is None:
            return None
        return full - last_zero

    def max_rss_kib(self, start: float, end: float) -> int:
        """The largest VmRSS sampled between ``start`` and ``end`` (perf_counter)."""
        return max((kib for t, kib in self.rss if start <= t <= end), default=0)


# --- one measurement ----------------------------------------------------------------------


@dataclass
class Row:
    d: int
    n: int
    mode: str
    k: str
    t: str
    ring: int
    upload_mb: float
    agents_ingest_s: float
    metrics_ingest_s: float | None
    round_s: float
    clients_s: float
    phases: dict[str, float]
    unmask_s: float
    rss_idle_mb: float
    rss_ingest_mb: float
    rss_peak_mb: float
    enroll_s: float

    @property
    def ingest_s(self) -> float:
        """The coordinator's ingest time (metrics), or the agents' if the scrapes missed it."""
        return self.metrics_ingest_s or self.agents_ingest_s

    @property
    def mb_s(self) -> float:
        return self.upload_mb / self.ingest_s if self.ingest_s > 0 else float("nan")

    @property
    def coord_s(self) -> float:
        return self.round_s - self.clients_s


def settings_for(
    *, task: str, n: int, secure: bool, degree: int, threshold: int, chunk_elements: int
) -> dict[str, Any]:
    from tests.e2e.harness import FAST, merged

    neighbours = n - 1 if degree >= n - 1 else degree
    # at least the threshold the agents accept (secure_agg.threshold): below it they refuse
    safe = required_threshold(clients=n, holders=neighbours, corrupt_rate=DEFAULT_CORRUPT_RATE)
    return merged(
        FAST,
        task=task,
        rounds=1,
        cohort=n,
        min_clients=n,
        over_selection=0.0,
        secure_aggregation={
            "enabled": secure,
            "degree": degree,
            "threshold": max(2, safe, min(threshold, neighbours)),
        },
        deadlines={
            "selection": 60,
            "advertise_keys": 600,
            "share_keys": 600,
            "masked_input": 1800,
            "consistency_check": 600,
            "unmasking": 600,
            "restart_grace": 60,
        },
        limits={"chunk_elements": chunk_elements, "checkin_wait": 2, "rate_per_second": 10_000},
    )


def measure(
    *,
    d: int,
    n: int,
    secure: bool,
    degree: int,
    threshold: int,
    chunk_elements: int,
    workdir: Path,
    download: bool,
) -> Row:
    from edge_client.session import Outcome
    from tests.e2e.harness import Coordinator

    task = _task_name(d)
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=workdir))
    settings = settings_for(
        task=task,
        n=n,
        secure=secure,
        degree=degree,
        threshold=threshold,
        chunk_elements=chunk_elements,
    )
    coordinator = Coordinator(root, settings)
    sampler: Sampler | None = None
    try:
        coordinator.start(timeout=300.0)
        assert coordinator.process is not None
        pid = coordinator.process.pid
        rss_idle = _proc_kib(pid, "VmRSS")
        sampler = Sampler(pid, coordinator.metrics_port)
        sampler.start()
        barrier = Barrier(n=n, timeout=1800.0)
        update = SharedUpdate(seed=d + n)
        cls = session_class(barrier, update, download=download)
        results, enroll_s = asyncio.run(
            _run_agents(coordinator, root, n=n, task=task, session_cls=cls, compute=update.compute)
        )
        sampler.finish()
        rss_peak = _proc_kib(pid, "VmHWM")
        bad = [r for r in results if r.outcome is not Outcome.COMMITTED]
        if bad:
            raise RuntimeError(
                f"d={d} n={n}: {len(bad)} agents did not commit: {bad[:3]}\n"
                f"{coordinator.log()[-3000:]}"
            )
        status = coordinator.status()
        (round_,) = status["rounds"]
        phases = {p["phase"]: float(p["seconds"] or 0.0) for p in round_["phases"]}
        ring = int(barrier.params["ring"])  # d deltas, v̄ block means, weight, clip count
        payload = n * ring * 4
        assert barrier.released is not None
        assert barrier.first_event is not None
        return Row(
            d=d,
            n=n,
            mode="secure" if secure else "plain",
            k=str(barrier.params.get("k") or "all") if secure else "-",
            t=str(barrier.params.get("t", "?")) if secure else "-",
            ring=ring,
            upload_mb=payload / 1e6,
            agents_ingest_s=max(barrier.done) - barrier.released,
            metrics_ingest_s=sampler.ingest_window(payload),
            round_s=float(round_["duration_seconds"]),
            clients_s=barrier.released - barrier.first_event,
            phases=phases,
            unmask_s=sampler.unmask_s,
            rss_idle_mb=rss_idle / 1024,
            rss_ingest_mb=sampler.max_rss_kib(barrier.released, max(barrier.done)) / 1024,
            rss_peak_mb=rss_peak / 1024,
            enroll_s=enroll_s,
        )
    finally:
        if sampler is not None:
            sampler.stopped.set()
        coordinator.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- the report ---------------------------------------------------------------------------


def _fmt_d(d: int) -> str:
    return f"{d / 1e6:g}M" if d >= 1_000_000 else f"{d / 1e3:g}k"


def _mb(value: float) -> str:
    return f"{value:.0f}" if value else "-"


def print_tables(rows: Sequence[Row]) -> None:
    plain = {(r.d, r.n): r for r in rows if r.mode == "plain"}

    def ratio(r: Row, attr: str) -> str:
        base = plain.get((r.d, r.n))
        if r.mode != "secure" or base is None:
            return "-"
        return f"{getattr(r, attr) / getattr(base, attr):.2f}"

    print(
        f"{'d':>5} {'n':>4} {'mode':>6} {'k':>4} {'t':>3} {'upload MB':>10} {'ingest s':>9} "
        f"{'MB/s':>7} {'round s':>8} {'sec/plain':>9} {'peak RSS MB':>11}"
    )
    for r in rows:
        print(
            f"{_fmt_d(r.d):>5} {r.n:>4} {r.mode:>6} {r.k:>4} {r.t:>3} {r.upload_mb:10.1f} "
            f"{r.ingest_s:9.2f} {r.mb_s:7.1f} {r.round_s:8.2f} {ratio(r, 'round_s'):>9} "
            f"{r.rss_peak_mb:11.0f}"
        )
    print(
        "ingest s: first chunk received to last chunk durable, from the coordinator's "
        "byte counter scraped every 0.1 s (up to +0.2 s); MB = 10^6 bytes"
    )
    print()
    print(
        "Where the round's time goes, in seconds (coord = round - clients; phases from "
        "status --json; unmask from fedadamw_secagg_unmask_duration_seconds):"
    )
    print(
        f"{'d':>5} {'n':>4} {'mode':>6} {'clients':>7} {'coord':>6} {'sec/plain':>9} "
        f"{'keys':>5} {'masked_input':>12} {'consist.':>8} {'unmasking':>9} {'unmask':>6} "
        f"{'agents ingest':>13} {'enroll':>6}"
    )
    for r in rows:
        keys = r.phases.get("advertise_keys", 0.0) + r.phases.get("share_keys", 0.0)
        print(
            f"{_fmt_d(r.d):>5} {r.n:>4} {r.mode:>6} {r.clients_s:7.2f} {r.coord_s:6.2f} "
            f"{ratio(r, 'coord_s'):>9} {keys:5.2f} {r.phases.get('masked_input', 0.0):12.2f} "
            f"{r.phases.get('consistency_check', 0.0):8.2f} "
            f"{r.phases.get('unmasking', 0.0):9.2f} {r.unmask_s:6.2f} {r.agents_ingest_s:13.2f} "
            f"{r.enroll_s:6.1f}"
        )
    print()
    print(
        "Coordinator memory against n, MB: idle = VmRSS after startup; ingest = largest "
        "VmRSS sampled during the uploads; peak = VmHWM after the round (commit included):"
    )
    print(
        f"{'d':>5} {'mode':>6} "
        + " ".join(
            f"{'n=' + str(n) + ' idle/ingest/peak':>24}" for n in sorted({r.n for r in rows})
        )
    )
    for d in sorted({r.d for r in rows}):
        for mode in ("secure", "plain"):
            cells = [
                f"{r.rss_idle_mb:.0f}/{_mb(r.rss_ingest_mb)}/{r.rss_peak_mb:.0f}"
                for r in sorted(rows, key=lambda r: r.n)
                if r.d == d and r.mode == mode
            ]
            if cells:
                print(f"{_fmt_d(d):>5} {mode:>6} " + " ".join(f"{c:>24}" for c in cells))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=_ints, default=[1_000_000, 10_000_000])
    parser.add_argument("--clients", type=_ints, default=[20, 100])
    parser.add_argument("--degree", type=int, default=8, help="k of the SecAgg+ graph")
    parser.add_argument(
        "--threshold",
        type=int,
        default=5,
        help="t (capped by the neighbours, raised to the safe minimum)",
    )
    parser.add_argument("--chunk-elements", type=int, default=262_144)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--download", action="store_true", help="agents download the model")
    parser.add_argument("--quick", action="store_true", help="d = 100k, n = 5 and 10")
    args = parser.parse_args(argv)
    sizes, clients = ([100_000], [5, 10]) if args.quick else (args.sizes, args.clients)

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    for d in sizes:
        _task_name(d)
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    need = max(n for n in clients) * (2 * max(sizes) + 4) * 4  # Δ and the whole v̄, 4 B each
    free = shutil.disk_usage(workdir).free
    print(
        f"Coordinator ingest: SQLite, TLS + mutual TLS on loopback, chunk_elements "
        f"{args.chunk_elements}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at start; spool needs "
        f"{need / 1e9:.1f} GB, {free / 1e9:.0f} GB free in {workdir}",
        flush=True,
    )
    if free < 1.2 * need:
        print(f"not enough free space in {workdir}", file=sys.stderr)
        return 1
    rows: list[Row] = []
    for d in sizes:
        for n in clients:
            for secure in (True, False):
                started = time.perf_counter()
                row = measure(
                    d=d,
                    n=n,
                    secure=secure,
                    degree=args.degree,
                    threshold=args.threshold,
                    chunk_elements=args.chunk_elements,
                    workdir=workdir,
                    download=args.download,
                )
                rows.append(row)
                print(
                    f"  d={_fmt_d(d)} n={n} {row.mode}: round {row.round_s:.1f}s, ingest "
                    f"{row.mb_s:.0f} MB/s, peak RSS {row.rss_peak_mb:.0f} MB "
                    f"({time.perf_counter() - started:.0f}s with setup)",
                    flush=True,
                )
    print()
    print(
        f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"this process (the agents) peaked at "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    print_tables(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``fedadamw demo``: a real deployment on loopback, started, watched and stopped for you.

It runs the system as operators and device owners would, each part as its own process:

1. ``fedadamw-coordinator run`` with SQLite and TLS, in a fresh data directory;
2. ``fedadamw-coordinator token create`` for every agent;
3. ``fedadamw-edge enroll`` and ``fedadamw-edge run`` for each of ``clients`` agents, each
   with its own Dirichlet share of the digits (``--partition i/N``);

then shows a live table of the rounds (phase, cohort, dropouts, test accuracy and loss, read
from ``fedadamw-coordinator status --json``), and at the end a summary with the time of each
round split by phase, and a PNG of accuracy per round. ``--drop-rate P`` kills each agent
with probability P in each round (SIGKILL, while it trains) and restarts it. Ctrl-C, or
the end, stops every process it started.

This module only starts commands and reads their output: like any user, it needs no part
of the coordinator or the agent in its own process.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from fedadamw.errors import InvalidArgumentError

__all__ = ["DemoConfig", "run_demo"]

PHASES = ["advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"]


@dataclass(frozen=True)
class DemoConfig:
    task: str = "digits-cnn"
    clients: int = 8
    rounds: int = 20
    drop_rate: float = 0.0
    dirichlet: float = 0.5
    local_steps: int = 20
    lr: float = 3e-3
    seed: int = 0
    out: Path = field(
        default_factory=lambda: Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    data_dir: Path | None = None  # the coordinator's; default: OUT/coordinator
    reference: bool = False  # also simulate the same task without secure aggregation

    def __post_init__(self) -> None:
        if not 3 <= self.clients <= 64:
            raise InvalidArgumentError(f"--clients must be 3 to 64, got {self.clients}")
        if self.rounds < 1:
            raise InvalidArgumentError(f"--rounds must be at least 1, got {self.rounds}")
        if not 0 <= self.drop_rate < 1:
            raise InvalidArgumentError(f"--drop-rate must be in [0, 1), got {self.drop_rate}")

    @property
    def min_clients(self) -> int:
        return max(3, math.ceil(self.clients / 2))


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str:
    """A console script of this installation (next to this Python), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise InvalidArgumentError(f"{name} is not installed next to {sys.executable} or on PATH")
    return found


class Deployment:
    """The processes of one demo, and the means to stop them all."""

    def __init__(self, config: DemoConfig, stream: TextIO) -> None:
        self.config = config
        self.stream = stream
        self.out = config.out
        self.data_dir = config.data_dir or config.out / "coordinator"
        self.port = _free_port()
        self.enroll_port = _free_port()
        self.metrics_port = _free_port()
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.agents: dict[int, subprocess.Popen[bytes]] = {}
        self.rng = random.Random(config.seed)

    # --- processes ----------------------------------------------------------------------

    def _config_file(self) -> Path:
        c = self.config
        path = self.out / "coordinator.toml"
        path.write_text(
            f'task = "{c.task}"\nrounds = {c.rounds}\ncohort = {c.clients}\n'
            f"min_clients = {c.min_clients}\nover_selection = 0.0\nlocal_steps = {c.local_steps}\n"
            f"lr = {c.lr}\nseed = {c.seed}\n\n[deadlines]\nselection = 8\nadvertise_keys = 10\n"
            "share_keys = 10\nmasked_input = 15\nconsistency_check = 5\nunmasking = 5\n"
            "restart_grace = 20\n"
        )
        return path

    def _log(self, name: str) -> BinaryIO:
        return (self.out / "logs" / f"{name}.log").open("ab")

    def start_coordinator(self) -> None:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        command = [
            _tool("fedadamw-coordinator"), "run", "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--enroll-listen", f"127.0.0.1:{self.enroll_port}",
            "--metrics-port", str(self.metrics_port), "--config", str(self._config_file()),
        ]  # fmt: skip
        with self._log("coordinator") as log:
            self.coordinator = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.coordinator.poll() is not None:
                raise InvalidArgumentError(
                    f"the coordinator exited; see {self.out / 'logs' / 'coordinator.log'}"
                )
            with suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1)
                return
            time.sleep(0.3)
        raise InvalidArgumentError("the coordinator did not start within 120 s")

    def admin(self, *args: str) -> str:
        result = subprocess.run(
            [_tool("fedadamw-coordinator"), *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise InvalidArgumentError(
                f"fedadamw-coordinator {args[0]} failed: {result.stderr.strip()}"
            )
        return result.stdout

    def enroll_agents(self) -> None:
        tokens = self.admin("token", "create", "--count", str(self.config.clients)).split()
        for i, token in enumerate(tokens):
            state = self.out / "agents" / f"agent-{i}"
            command = [
                _tool("fedadamw-edge"), "enroll", "--coordinator", f"127.0.0.1:{self.port}",
                "--enroll-address", f"127.0.0.1:{self.enroll_port}", "--token", token,
                "--ca-cert", str(self.data_dir / "tls" / "ca.pem"),
                "--state-dir", str(state), "--label", f"demo-{i}",
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise InvalidArgumentError(f"enrolling agent {i} failed: {result.stderr.strip()}")

    def start_agent(self, i: int) -> None:
        c = self.config
        command = [
            _tool("fedadamw-edge"), "run", "--state-dir", str(self.out / "agents" / f"agent-{i}"),
            "--task", c.task, "--partition", f"{i}/{c.clients}", "--dirichlet", str(c.dirichlet),
            "--seed", str(c.seed), "--threads", "1", "--device", "cpu",
        ]  # fmt: skip
        with self._log(f"agent-{i}") as log:
            self.agents[i] = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )

    def kill_agent(self, i: int) -> None:
        process = self.agents.get(i)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    def stop(self) -> None:
        for process in self.agents.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.agents.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.coordinator is not None and self.coordinator.poll() is None:
            self.coordinator.send_signal(signal.SIGTERM)
            try:
                self.coordinator.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.coordinator.kill()

    # --- watching -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.admin("status", "--json", "--limit", "1000"))
        return data

    def phase(self) -> int:
        """The open round's phase number from /metrics (0 when none is open)."""
        with suppress(OSError, ValueError):
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)
                .read()
                .decode()
            )
            for line in text.splitlines():
                if line.startswith("fedadamw_round_phase "):
                    return int(float(line.split()[1]))
        return 0


def _row(r: dict[str, Any], accuracy: dict[int, float], loss: dict[int, float]) -> str:
    version = r["committed_version"]
    acc = f"{accuracy[version]:.3f}" if version in accuracy else "-"
    los = f"{loss[version]:.3f}" if version in loss else "-"
    dropped = ",".join(f"{k.split('_')[0]}:{v}" for k, v in r["dropouts"].items()) or "-"
    secs = f"{r['duration_seconds']:.1f}" if r["duration_seconds"] is not None else "-"
    return (
        f"{r['round']:>5}  {r['outcome']:9}  {r['cohort']:>6}  {r['survivors'] or 0:>9}  "
        f"{dropped:18}  {acc:>8}  {los:>7}  {secs:>6}"
    )


HEADER = (
    f"{'round':>5}  {'outcome':9}  {'cohort':>6}  {'survivors':>9}  {'dropouts':18}  "
    f"{'accuracy':>8}  {'loss':>7}  {'secs':>6}"
)


def run_demo(config: DemoConfig, *, stream: TextIO | None = None) -> int:
    """Run the demo; returns the exit code."""
    out = stream or sys.stdout
    deployment = Deployment(config, out)
    config.out.mkdir(parents=True, exist_ok=True)
    print(
        f"Starting a coordinator (SQLite, TLS) and {config.clients} edge agents on loopback: "
        f"{_count(config.rounds, 'round')} of secure FedAdamW on {config.task}"
        + (f", agents dropping with p = {config.drop_rate}" if config.drop_rate else "")
        + f".\nLogs: {config.out / 'logs'}",
        file=out,
        flush=True,
    )
    try:
        deployment.start_coordinator()
        print(
            f"Prometheus metrics: http://127.0.0.1:{deployment.metrics_port}/metrics",
            file=out,
            flush=True,
        )
        deployment.enroll_agents()
        for i in range(config.clients):
            deployment.start_agent(i)
        status = _watch(deployment, config, out)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=out, flush=True)
        deployment.stop()
        return 130
    finally:
        deployment.stop()
    _summary(status, config, out)
    return 0


class Killer(threading.Thread):
    """Kills each agent with probability ``rate`` once in every round, as soon as the round
    is past its key advertisement (the agents share keys, then train), and restarts it a few
    seconds later. It watches /metrics every 50 ms: a round of the small demo model lasts
    about a second."""

    def __init__(self, deployment: Deployment, rate: float, out: TextIO) -> None:
        super().__init__(name="demo-killer", daemon=True)
        self.deployment = deployment
        self.rate = rate
        self.out = out
        self.done = threading.Event()
        self.kills = 0

    def run(self) -> None:
        previous = 0
        down: dict[int, float] = {}
        while not self.done.is_set():
            phase = self.deployment.phase()
            now = time.monotonic()
            if phase in (2, 3) and previous not in (2, 3):  # a new round is under way
                victims = [
                    i
                    for i in range(self.deployment.config.clients)
                    if i not in down and self.deployment.rng.random() < self.rate
                ]
                for i in victims:
                    self.deployment.kill_agent(i)
                    down[i] = now + 3.0
                self.kills += len(victims)
            previous = phase
            for i, at in list(down.items()):
                if now >= at:
                    self.deployment.start_agent(i)
                    del down[i]
            self.done.wait(0.05)


def _watch(deployment: Deployment, config: DemoConfig, out: TextIO) -> dict[str, Any]:
    live = out.isatty()
    print(HEADER, file=out, flush=True)
    shown: set[int] = set()
    killer = Killer(deployment, config.drop_rate, out) if config.drop_rate else None
    if killer is not None:
        killer.start()
    progress = time.monotonic()
    try:
        while True:
            status = deployment.status()
            versions = status["versions"]
            accuracy = {
                v["version"]: v["test_accuracy"] for v in versions if v["test_accuracy"] is not None
            }
            loss = {v["version"]: v["test_loss"] for v in versions if v["test_loss"] is not None}
            if 0 in accuracy and -1 not in shown:
                shown.add(-1)
                initial = f"{'init':>5}  {'model':9}  {'':>6}  {'':>9}  {'':18}  "
                initial += f"{accuracy[0]:>8.3f}  {loss[0]:>7.3f}"
                print(("\r\x1b[2K" if live else "") + initial, file=out, flush=True)
            for r in sorted(status["rounds"], key=lambda r: r["round"]):
                evaluated = r["committed_version"] is None or r["committed_version"] in accuracy
                if r["outcome"] != "running" and evaluated and r["round"] not in shown:
                    shown.add(r["round"])
                    progress = time.monotonic()
                    row = _row(r, accuracy, loss)
                    print(("\r\x1b[2K" if live else "") + row, file=out, flush=True)
            version = status["model_version"] or 0
            if version >= config.rounds and version in accuracy:
                if killer is not None:
                    print(f"\nThe demo killed {killer.kills} agents mid-round.", file=out)
                return status
            running = next((r for r in status["rounds"] if r["outcome"] == "running"), None)
            if live and running is not None:
                out.write(f"\r\x1b[2K{running['round']:>5}  {running['phase']}")
                out.flush()
            if time.monotonic() - progress > 600:
                raise InvalidArgumentError("no round finished for 10 minutes; see the logs")
            time.sleep(1.0)
    finally:
        if killer is not None:
            killer.done.set()
            killer.join(timeout=10)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _initial(status: dict[str, Any]) -> str:
    first = next((v for v in status["versions"] if v["version"] == 0), None)
    if first is None or first["test_accuracy"] is None:
        return ""
    return f" (the initial model: {first['test_accuracy']:.4f})"


def _summary(status: dict[str, Any], config: DemoConfig, out: TextIO) -> None:
    rounds = sorted(status["rounds"], key=lambda r: r["round"])
    committed = [r for r in rounds if r["outcome"] == "committed"]
    print(
        f"\n{_count(len(committed), 'round')} committed, {len(rounds) - len(committed)} aborted; "
        f"final test accuracy {status['test_accuracy']:.4f}{_initial(status)}",
        file=out,
    )
    print("\nRound time by phase, seconds (mean over committed rounds):", file=out)
    for phase in PHASES:
        times = [
            p["seconds"]
            for r in committed
            for p in r["phases"]
            if p["phase"] == phase and p["seconds"] is not None
        ]
        if times:
            print(f"  {phase:18} {sum(times) / len(times):7.2f}", file=out)
    png = config.out / "accuracy.png"
    _plot(status, config, png)
    data_dir = config.data_dir or config.out / "coordinator"
    print(
        f"\nplot:   {png}\nstatus: fedadamw-coordinator status --data-dir {data_dir}",
        file=out,
        flush=True,
    )


def _plot(status: dict[str, Any], config: DemoConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = [v for v in status["versions"] if v["test_accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(
        [v["version"] for v in versions],
        [v["test_accuracy"] for v in versions],
        marker="o",
        label="secure FedAdamW (deployed)",
    )
    if config.reference:
        for label, xs, ys in _reference(config):
            ax.plot(xs, ys, linestyle="--", label=label)
    ax.set(
        xlabel="round (model version)",
        ylabel="test accuracy",
        ylim=(0, 1),
        title=f"{config.task}, {config.clients} agents",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reference(config: DemoConfig) -> Sequence[tuple[str, list[int], list[float]]]:
    """The same task and settings in the simulator, without secure aggregation."""
    from fedadamw.simulate import SimulationConfig, simulate

    records = simulate(
        SimulationConfig(
            task=config.task,
            algorithms=("fedadamw",),
            clients=config.clients,
            participation=1.0,
            dirichlet=config.dirichlet,
            rounds=config.rounds,
            local_steps=config.local_steps,
            lrs={"fedadamw": config.lr},
            seed=config.seed,
        )
    )
    return [
        (
            "FedAdamW without secure aggregation (simulated)",
            [r.round for r in records],
            [r.test_accuracy for r in records],
        )
    ]

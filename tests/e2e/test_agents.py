"""``fedadamw-edge`` agents as separate processes, against a real coordinator process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .harness import FAST, Coordinator, merged

BIN = Path(sys.executable).parent


def edge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fedadamw-edge"), *args], capture_output=True, text=True, timeout=timeout
    )


def start_agent(state: Path, partition: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    process = subprocess.Popen(
        [
            str(BIN / "fedadamw-edge"),
            "run",
            "--state-dir",
            str(state),
            "--partition",
            partition,
            "--threads",
            "1",
            *extra,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    handle.close()
    return process


def test_insecure_mode_runs_rounds_and_warns(tmp_path: Path) -> None:
    coordinator = Coordinator(
        tmp_path, merged(FAST, rounds=2, cohort=3, min_clients=3, local_steps=5), insecure=True
    )
    coordinator.start()
    agents = []
    try:
        assert "RUNNING WITHOUT TLS" in coordinator.log()
        for i, token in enumerate(coordinator.tokens(3)):
            enrolled = edge(
                "enroll", "--insecure", "--coordinator", coordinator.address,
                "--enroll-address", coordinator.enroll_address, "--token", token,
                "--state-dir", str(tmp_path / f"a{i}"),
            )  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
        agents = [
            start_agent(tmp_path / f"a{i}", f"{i}/3", tmp_path / f"a{i}.log") for i in range(3)
        ]
        status = coordinator.wait_for(lambda s: s["model_version"] == 2, timeout=180)
        assert [r["outcome"] for r in status["rounds"]] == ["committed", "committed"]
    finally:
        for agent in agents:
            agent.terminate()
        for agent in agents:
            agent.wait(timeout=60)
        coordinator.stop()
    assert all(agent.returncode == 0 for agent in agents)
    shown = edge("status", "--state-dir", str(tmp_path / "a0"))
    assert "INSECURE" in shown.stdout
    assert "committed" in shown.stdout

"""The agent image's entrypoint (deploy/compose/agent-entrypoint.sh) against a real
coordinator: the first start enrolls with the token file and runs; a restart on the same
state directory runs without enrolling again (the token is single-use)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .harness import BIN, FAST, Coordinator, enrolled_agents, merged

ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "agent-entrypoint.sh"


def _start(
    coordinator: Coordinator, root: Path, token_file: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "FEDADAMW_COORDINATOR": coordinator.address,
        "FEDADAMW_ENROLL_ADDRESS": coordinator.enroll_address,
        "FEDADAMW_TOKEN_FILE": str(token_file),
        "FEDADAMW_CA_CERT": str(coordinator.data_dir / "tls" / "ca.pem"),
        "FEDADAMW_STATE_DIR": str(root / "state"),
        "OMP_NUM_THREADS": "1",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(ENTRYPOINT), "--partition", "2/3", "--threads", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def _wait_in(log: Path, offset: int, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace")[offset:]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} never logged:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def test_the_entrypoint_enrolls_once_then_runs(tmp_path: Path) -> None:
    # every round needs all three agents, the entrypoint's among them
    coordinator = Coordinator(tmp_path, merged(FAST, rounds=6, cohort=3, min_clients=3))
    coordinator.start()
    others = enrolled_agents(coordinator, tmp_path, 2)
    token_file = tmp_path / "token"
    token_file.write_text(coordinator.token())
    log = tmp_path / "entrypoint.log"
    processes = []
    try:
        for agent in others:
            agent.start()
        processes.append(_start(coordinator, tmp_path, token_file, log))
        _wait_in(log, 0, "committed (model version")
        first = _stop(processes[0])
        # a container restart: the state directory is kept, the token is spent
        offset = len(log.read_text(errors="replace"))
        processes.append(_start(coordinator, tmp_path, token_file, log))
        _wait_in(log, offset, "committed (model version")
        second = _stop(processes[1])
        # stopped while it starts up, before it has anything to finish
        processes.append(_start(coordinator, tmp_path, token_file, log))
        time.sleep(1.0)
        third = _stop(processes[2])
        status = coordinator.status()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for agent in others:
            agent.stop()
        coordinator.stop()
    text = log.read_text()
    assert (first, second, third) == (0, 0, 0), text[-3000:]
    assert text.count("enrolled as client") == 1, text[-3000:]
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert sum("committed (model version" in r["msg"] for r in records) >= 2  # JSON log lines
    committed = [r for r in status["rounds"] if r["outcome"] == "committed"]
    assert len(committed) >= 2
    assert all((r["cohort"], r["survivors"]) == (3, 3) for r in committed)
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"

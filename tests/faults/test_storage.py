"""The coordinator's storage full: uploads are refused as temporary, retried, and resumed.

The masked-input spool (``DIR/spool``) of a real coordinator process lies on a small tmpfs
that the test fills with a ballast file, leaving a few chunks' worth of space. Real
``fedadamw-edge`` agents run a secure round; their uploads hit the full disk part way. What
must happen (docs/architecture.md, sections 5 and 6):

- the coordinator answers UNAVAILABLE with a message that says its storage is full, never
  INTERNAL, and says so once in its log at ERROR, and in ``fedadamw_dependency_failing``;
- the agents show that message and retry with backoff (no hot loop), staying in the round;
- once the ballast is gone, the uploads resume from the acknowledged chunks, the round
  commits with every agent, the log and the metric say the storage recovered.

Mounting a tmpfs needs root (or CAP_SYS_ADMIN), as on this project's CI machines.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import FAST, Coordinator, enrolled_agents, merged
from tests.faults import matrix

SETTINGS = merged(
    FAST,
    rounds=1,
    cohort=4,
    min_clients=4,
    deadlines={"masked_input": 120, "consistency_check": 20, "unmasking": 20},
)
FREE_BYTES = 48 << 10  # three 16 KiB chunks fit; no participant's whole input does
HOLD_SECONDS = 15.0  # how long the disk stays full once the first upload is refused


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int) -> Iterator[Path]:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``path``'s filesystem."""
    ballast = path / "ballast"
    stat = os.statvfs(path)
    size = stat.f_bavail * stat.f_frsize - leave
    with ballast.open("wb") as file:
        file.write(b"\0" * size)
    return ballast


def metric(coordinator: Coordinator, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{coordinator.metrics_port}/metrics", timeout=10
    ).read()
    pattern = (
        rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? (\S+)$"
        if labels
        else (rf"^{re.escape(name)} (\S+)$")
    )
    match = re.search(pattern, text.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def refused_uploads(coordinator: Coordinator, code: str) -> float:
    return metric(
        coordinator,
        "fedadamw_grpc_requests_total",
        f'code="{code}",method="UploadMaskedInput"',
    )


def wait_until(predicate: object, timeout: float, what: str, log: object) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen in {timeout}s:\n{log()[-4000:]}")  # type: ignore[operator]


def test_a_full_spool_is_retried_and_the_round_commits_when_space_returns(
    tmp_path: Path,
) -> None:
    coordinator = Coordinator(tmp_path, SETTINGS)
    coordinator.data_dir.mkdir(mode=0o700)
    with small_tmpfs(coordinator.data_dir / "spool", 4 << 20) as spool:
        ballast = fill(spool, FREE_BYTES)
        coordinator.start()
        agents = enrolled_agents(coordinator, tmp_path, 4)
        try:
            for agent in agents:
                agent.start()
            wait_until(
                lambda: "the storage is failing" in coordinator.log(),
                180,
                "a refused upload",
                coordinator.log,
            )
            assert metric(coordinator, "fedadamw_dependency_failing", 'dependency="storage"') == 1
            refused_at_first = refused_uploads(coordinator, "UNAVAILABLE")
            time.sleep(HOLD_SECONDS)
            refused = refused_uploads(coordinator, "UNAVAILABLE") - refused_at_first
            status = coordinator.status()
            assert [r["outcome"] for r in status["rounds"]] == ["running"]
            ballast.unlink()
            status = coordinator.wait_for(lambda s: s["model_version"] >= 1, timeout=120)
            recovered = metric(coordinator, "fedadamw_dependency_failing", 'dependency="storage"')
            refusals = metric(
                coordinator, "fedadamw_dependency_refusals_total", 'dependency="storage"'
            )
            internal = refused_uploads(coordinator, "INTERNAL")
        finally:
            for agent in agents:
                agent.stop()
            coordinator.stop()
    print(f"\nstorage full {HOLD_SECONDS:.0f}s: {refused:.0f} uploads refused by 4 agents")
    log = coordinator.log()
    (round_,) = status["rounds"]
    assert (round_["outcome"], round_["cohort"], round_["survivors"]) == ("committed", 4, 4)
    assert internal == 0
    assert recovered == 0
    assert refusals >= 1
    # Backoff, not a hot loop: each agent's retries double from 0.1-0.3 s up to 15 s.
    assert 1 <= refused <= 4 * 12, refused
    assert log.count("the storage is failing") == 1, log[-4000:]
    assert re.search(r"ERROR .*the storage is failing: UploadMaskedInput refused", log), log
    assert "the storage recovered after" in log
    assert "Traceback" not in log
    agent_logs = [agent.log() for agent in agents]
    # the agent says the coordinator answered (it is up), not that it is unreachable
    assert any(
        "coordinator answered: not now (UNAVAILABLE: the coordinator cannot store data now" in text
        for text in agent_logs
    ), agent_logs[0][-3000:]
    assert not any(
        "coordinator unreachable (UNAVAILABLE: the coordinator cannot store" in text
        for text in agent_logs
    )
    assert all("round" in text and "committed" in text for text in agent_logs)
    matrix.record(
        "blob store full",
        f"spool on a 4 MiB tmpfs, 48 KiB free, full for {HOLD_SECONDS:.0f} s",
        "masked_input",
        "committed 4/4 once space returned",
        f"{refused:.0f} uploads refused UNAVAILABLE ('cannot store data now') in "
        f"{HOLD_SECONDS:.0f} s, none INTERNAL; one ERROR, dependency_failing=1, then recovered",
    )

"""An agent process facing a failure that no retry mends: it says why and exits.

Each case is a real ``fedadamw-edge run`` against a real coordinator process over mutual
TLS. The agent must show the coordinator's own message (or the TLS failure) in its log and
exit with the code its systemd unit does not restart on, instead of retrying forever.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_client.agent import EXIT_CONFIGURATION, EXIT_ENROLLMENT

from .harness import FAST, AgentProcess, Coordinator, enrolled_agents, merged

SETTINGS = merged(FAST, rounds=1, task="digits-cnn")


def _exit_code(agent: AgentProcess, timeout: float = 60.0) -> int:
    assert agent.process is not None
    try:
        return agent.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        agent.stop()
        pytest.fail(f"the agent kept running; its log:\n{agent.log()[-3000:]}")


def _point_at(agent: AgentProcess, coordinator: Coordinator) -> None:
    """Make the agent's state directory name ``coordinator``'s address."""
    path = agent.state / "agent.json"
    info = json.loads(path.read_text())
    info["coordinator"] = coordinator.address
    path.write_text(json.dumps(info))


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    (tmp_path / "a").mkdir()
    coordinator = Coordinator(tmp_path / "a", SETTINGS)
    coordinator.start()
    yield coordinator
    coordinator.stop()


def test_an_agent_of_another_task_shows_the_coordinators_message_and_exits(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    (agent,) = enrolled_agents(coordinator, tmp_path, 1)
    agent.start("--task", "digits-vit")
    code = _exit_code(agent)
    log = agent.log()
    assert code == EXIT_CONFIGURATION, log[-3000:]
    assert "this coordinator trains task 'digits-cnn', not 'digits-vit'" in log
    assert "retrying" not in log


def test_an_agent_whose_ca_does_not_sign_the_coordinator_exits(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    (tmp_path / "b").mkdir()
    other = Coordinator(tmp_path / "b", SETTINGS)
    other.start()
    try:
        (agent,) = enrolled_agents(coordinator, tmp_path, 1)
        _point_at(agent, other)  # the state directory belongs to the first one
        agent.start()
        code = _exit_code(agent)
    finally:
        other.stop()
    log = agent.log()
    assert code == EXIT_ENROLLMENT, log[-3000:]
    assert "enrollment do not match" in log
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log.lower()


def test_an_agent_the_coordinator_does_not_know_exits(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    # A coordinator with the same CA (its TLS directory restored) but another database: the
    # agent's certificate passes TLS, and the coordinator has no such client.
    (agent,) = enrolled_agents(coordinator, tmp_path, 1)
    coordinator.stop()
    (tmp_path / "c").mkdir()
    other = Coordinator(tmp_path / "c", SETTINGS)
    other.data_dir.mkdir(mode=0o700)
    shutil.copytree(coordinator.data_dir / "tls", other.data_dir / "tls")
    other.start()
    try:
        _point_at(agent, other)
        started = time.monotonic()
        agent.start()
        code = _exit_code(agent)
    finally:
        other.stop()
    log = agent.log()
    assert code == EXIT_ENROLLMENT, log[-3000:]
    assert "a client certificate from this coordinator is required" in log
    assert time.monotonic() - started < 60

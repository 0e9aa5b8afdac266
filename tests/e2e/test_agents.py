"""``fedadamw-edge`` agents as separate processes against a real coordinator process.

Enrollment with the CLI, rounds of secure FedAdamW on the built-in digits task, the
coordinator killed and restarted, the agents' state directories and limits. Agents killed
in the middle of rounds, up to and past the threshold: ``tests/faults/test_agents_killed.py``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from coordinator.domain import ParticipantStatus, RoundPhase
from coordinator.store.sql import SqlStore, default_sqlite_url

from .harness import FAST, AgentProcess, Coordinator, edge, enrolled_agents, free_port, merged

TRAIN = merged(
    FAST,
    rounds=4,
    cohort=5,
    min_clients=3,
    local_steps=20,
    lr=0.003,
    schedule="cosine",
    deadlines={"selection": 3, "advertise_keys": 15, "share_keys": 15, "masked_input": 40},
)


def _stop_all(agents: list[AgentProcess]) -> list[int | None]:
    return [agent.stop() for agent in agents]


def test_agents_train_the_model_over_secure_rounds(tmp_path: Path) -> None:
    # Every round with all five: selection and each phase end as soon as all have answered,
    # so generous deadlines cost nothing, and on two busy cores an agent may need a while
    # to check in again or to answer.
    settings = merged(TRAIN, deadlines={"selection": 15, "consistency_check": 30, "unmasking": 30})
    coordinator = Coordinator(tmp_path, settings)
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 5)
    metrics_port = free_port()
    try:
        agents[0].start("--metrics-port", str(metrics_port))
        for agent in agents[1:]:
            agent.start()
        status = coordinator.wait_for(
            lambda s: s["model_version"] >= 4 and s["test_accuracy"] is not None, timeout=300
        )
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    finally:
        codes = _stop_all(agents)
        coordinator.stop()
    assert codes == [0] * 5  # SIGTERM ends each agent cleanly
    rounds = sorted(status["rounds"], key=lambda r: r["round"])
    assert [(r["outcome"], r["cohort"], r["survivors"]) for r in rounds] == [
        ("committed", 5, 5)
    ] * 4
    accuracy = [v["test_accuracy"] for v in status["versions"]]
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy
    shown = json.loads(edge("status", "--state-dir", str(agents[0].state), "--json").stdout)
    assert shown["last_round"]["outcome"] == "committed"
    assert shown["last_round"]["model_version"] == 4
    assert "secure aggregation" in coordinator.log()
    assert 'fedadamw_agent_rounds_total{outcome="committed"} 4.0' in metrics
    assert "fedadamw_agent_local_steps_total 80.0" in metrics  # 4 rounds of K = 20
    assert "fedadamw_agent_connected 1.0" in metrics
    assert 'fedadamw_agent_transferred_bytes_total{direction="upload"}' in metrics


def _store(coordinator: Coordinator) -> SqlStore:
    return SqlStore(default_sqlite_url(coordinator.data_dir))


def _client_id(agent: AgentProcess) -> int:
    return int(json.loads((agent.state / "agent.json").read_text())["client_id"])


def _kill_when(
    coordinator: Coordinator,
    agents: list[AgentProcess],
    condition: Callable[[RoundPhase, ParticipantStatus], bool],
    count: int = 1,
    timeout: float = 120,
) -> tuple[str, list[AgentProcess]]:
    """SIGKILL up to ``count`` agents of one round as soon as its phase and their status match.

    Returns the round's id and the agents killed: fewer than ``count`` if the round ended
    first.
    """
    by_id = {_client_id(a): a for a in agents}
    killed: list[AgentProcess] = []
    round_id = ""
    deadline = time.monotonic() + timeout
    store = _store(coordinator)
    try:
        while len(killed) < count:
            if time.monotonic() > deadline:
                log = coordinator.log()[-3000:]
                raise TimeoutError(f"never matched; killed {len(killed)}\n{log}")
            open_round = store.open_round()
            if killed and (open_round is None or open_round.round_id != round_id):
                break  # that round ended before all ``count`` matched
            if open_round is None:
                time.sleep(0.02)
                continue
            for p in store.list_participants(open_round.round_id):
                agent = by_id[p.client_id]
                if condition(open_round.phase, p.status) and agent.running and len(killed) < count:
                    agent.kill()
                    killed.append(agent)
                    round_id = open_round.round_id
            time.sleep(0.02)
    finally:
        store.close()
    return round_id, killed


def _finished(coordinator: Coordinator, round_id: str, timeout: float = 120) -> dict[str, object]:
    status = coordinator.wait_for(
        lambda s: any(r["round_id"] == round_id and r["outcome"] != "running" for r in s["rounds"]),
        timeout=timeout,
    )
    return next(r for r in status["rounds"] if r["round_id"] == round_id)


def test_agents_ride_out_a_coordinator_restart(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, merged(TRAIN, rounds=3, cohort=4, local_steps=100))
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 4)
    try:
        for agent in agents:
            agent.start()
        coordinator.wait_for(lambda s: s["model_version"] >= 1, timeout=180)
        # kill -9 in the middle of the second round's training
        _kill_coordinator_in(coordinator, RoundPhase.MASKED_INPUT)
        coordinator.start()
        status = coordinator.wait_for(lambda s: s["model_version"] >= 3, timeout=300)
    finally:
        codes = _stop_all(agents)
        coordinator.stop()
    assert codes == [0] * 4
    assert [r["outcome"] for r in status["rounds"]].count("committed") == 3
    assert all("coordinator" in a.log() for a in agents)
    assert any("unreachable" in a.log() or "reconnecting" in a.log() for a in agents)


def _poll_store(
    coordinator: Coordinator, done: Callable[[SqlStore], bool], what: str, timeout: float
) -> None:
    """Poll the coordinator's database (faster than the CLI) until ``done`` holds."""
    deadline = time.monotonic() + timeout
    store = _store(coordinator)
    try:
        while not done(store):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} never came:\n{coordinator.log()[-3000:]}")
            time.sleep(0.05)
    finally:
        store.close()


def _kill_coordinator_in(coordinator: Coordinator, phase: RoundPhase, timeout: float = 120) -> None:
    def in_phase(store: SqlStore) -> bool:
        open_round = store.open_round()
        return open_round is not None and open_round.phase is phase

    _poll_store(coordinator, in_phase, f"phase {phase}", timeout)
    coordinator.kill()


def _wait_version(coordinator: Coordinator, version: int, timeout: float = 180) -> None:
    def committed(store: SqlStore) -> bool:
        latest = store.latest_version()
        return latest is not None and latest.version >= version

    _poll_store(coordinator, committed, f"version {version}", timeout)


def test_state_directory_reuse_and_damage(tmp_path: Path) -> None:
    # every round needs all three agents, so the restarted one must take part again
    coordinator = Coordinator(tmp_path, merged(TRAIN, rounds=4, cohort=3, min_clients=3))
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 3)
    try:
        again = agents[0].enroll(coordinator.token())
        assert again.returncode == 2
        assert "already holds" in again.stderr
        for agent in agents:
            agent.start()
        _wait_version(coordinator, 1)
        assert agents[1].stop() == 0
        first_run = agents[1].log()
        agents[1].start()  # the same state directory, a new process
        _wait_version(coordinator, 4)
    finally:
        _stop_all(agents)
        coordinator.stop()
    assert "stopped after" in first_run
    assert "committed" in agents[1].log()[len(first_run) :]

    (agents[2].state / "identity.key").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    damaged = edge("run", "--state-dir", str(agents[2].state), "--partition", "2/3")
    assert damaged.returncode == 2
    assert "identity.key is damaged" in damaged.stderr
    (agents[0].state / "client.pem").unlink()
    missing = edge("run", "--state-dir", str(agents[0].state), "--partition", "0/3")
    assert missing.returncode == 2
    assert "client.pem is missing" in missing.stderr
    assert "Traceback" not in damaged.stderr + missing.stderr
    for device, message in (("cuda:7", "GPU"), ("tpu", "unknown device")):
        bad = edge(
            "run", "--state-dir", str(agents[1].state), "--partition", "1/3", "--device", device
        )
        assert bad.returncode == 2
        assert message in bad.stderr
    assert oct((agents[1].state).stat().st_mode & 0o777) == "0o700"
    assert oct((agents[1].state / "identity.key").stat().st_mode & 0o777) == "0o600"


def test_an_agent_refuses_rounds_over_its_limits_and_keeps_running(tmp_path: Path) -> None:
    # Selection waits for all four (it ends once they are there): on busy cores three
    # could start first, and a round of the refusing agent and two others aborts.
    settings = merged(TRAIN, rounds=1, cohort=4, min_clients=3, deadlines={"selection": 120})
    coordinator = Coordinator(tmp_path, settings)
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 4)
    try:
        agents[3].start("--max-model-bytes", "1000")
        for agent in agents[:3]:
            agent.start()
        status = coordinator.wait_for(lambda s: s["model_version"] >= 1, timeout=240)
        assert agents[3].running  # refused, logged, still alive
    finally:
        _stop_all(agents)
        coordinator.stop()
    assert "over --max-model-bytes 1000" in agents[3].log()
    assert len(status["rounds"]) == 1, status["rounds"]
    (round0,) = status["rounds"]
    assert round0["outcome"] == "committed"
    assert round0["survivors"] == 3  # the refusing agent left at once, the others went on
    assert round0["dropouts"] == {"advertise_keys": 1}


def test_insecure_mode_runs_rounds_and_warns(tmp_path: Path) -> None:
    coordinator = Coordinator(
        tmp_path, merged(FAST, rounds=2, cohort=3, local_steps=5), insecure=True
    )
    coordinator.start()
    agents = [AgentProcess(coordinator, tmp_path, i, 3) for i in range(3)]
    try:
        assert "RUNNING WITHOUT TLS" in coordinator.log()
        for agent, token in zip(agents, coordinator.tokens(3), strict=True):
            enrolled = edge(
                "enroll", "--insecure", "--coordinator", coordinator.address,
                "--enroll-address", coordinator.enroll_address, "--token", token,
                "--state-dir", str(agent.state),
            )  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
            agent.start()
        status = coordinator.wait_for(lambda s: s["model_version"] >= 2, timeout=180)
    finally:
        codes = _stop_all(agents)
        coordinator.stop()
    assert codes == [0] * 3
    assert [r["outcome"] for r in status["rounds"]] == ["committed", "committed"]
    shown = edge("status", "--state-dir", str(agents[0].state))
    assert "INSECURE" in shown.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_agents_train_on_cuda(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, merged(TRAIN, rounds=2, cohort=3))
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 3)
    try:
        for agent in agents:
            agent.start("--device", "cuda")
        status = coordinator.wait_for(lambda s: s["model_version"] >= 2, timeout=300)
    finally:
        _stop_all(agents)
        coordinator.stop()
    assert all("on cuda" in agent.log() for agent in agents)
    assert status["rounds"][0]["outcome"] == "committed"


def test_an_agent_restarted_mid_round_leaves_that_round_instead_of_looping(tmp_path: Path) -> None:
    """Its keys died with it: the coordinator offers it the round again (it is still a
    participant), and it must leave at once rather than retry the round in a loop."""
    settings = merged(
        TRAIN,
        rounds=1,
        cohort=4,
        local_steps=100,  # long enough to be killed while training
        deadlines={"selection": 90, "masked_input": 90},
    )
    coordinator = Coordinator(tmp_path, settings)
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 4)
    try:
        for agent in agents:
            agent.start()
        round_id, (victim,) = _kill_when(
            coordinator,
            agents,
            lambda phase, status: (
                phase is RoundPhase.MASKED_INPUT and status is ParticipantStatus.SHARED
            ),
        )
        victim.start()  # at once, while its round is still open
        finished = _finished(coordinator, round_id, timeout=120)
        time.sleep(2)  # what it does after the round: nothing it repeats
        log = victim.log()
    finally:
        _stop_all(agents)
        coordinator.stop()
    # it left the round, so the round closed without waiting 90 s for it, and committed
    assert finished["outcome"] == "committed", finished
    assert finished["survivors"] == 3, finished
    assert finished["dropouts"] == {"masked_input": 1}, finished
    restarted = log[log.rindex("training digits-cnn") :]  # its log since the restart
    assert restarted.count("refused (the round is in phase PHASE_MASKED_INPUT") == 1, restarted
    assert restarted.count(f"selected for round {round_id}") == 1, restarted
    assert f"client {_client_id(victim)} left round {round_id}" in coordinator.log()

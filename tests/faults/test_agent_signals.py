"""An agent process frozen (SIGSTOP) past its phase deadline, then thawed (SIGCONT).

Real ``fedadamw-edge run`` agents and a real coordinator (mutual TLS, SQLite). One agent is
stopped while it trains in ``masked_input`` and stays stopped past that phase's deadline:
the coordinator must drop it and commit the round with the other four, and the stopped
agent, once continued, must find its round gone, say so, and take part in the next round,
which commits with all five. Nothing loops: the thawed agent makes a bounded number of
calls for the round it lost.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from coordinator.domain import ParticipantStatus, RoundPhase
from coordinator.store.sql import SqlStore, default_sqlite_url
from tests.e2e.harness import FAST, AgentProcess, Coordinator, enrolled_agents, merged
from tests.faults import matrix

SETTINGS = merged(
    FAST,
    rounds=2,
    cohort=5,
    min_clients=4,
    local_steps=60,  # long enough to be stopped while training
    lr=0.003,
    # every round waits for all five, so the second one shows the thawed agent is back
    # masked_input: five agents train 60 steps on two busy cores well inside it
    deadlines={"selection": 120, "masked_input": 20, "consistency_check": 6, "unmasking": 6},
)


def _client_id(agent: AgentProcess) -> int:
    return int(json.loads((agent.state / "agent.json").read_text())["client_id"])


def _stop_one_while_training(
    coordinator: Coordinator, agents: list[AgentProcess], timeout: float = 180
) -> tuple[str, AgentProcess]:
    by_id = {_client_id(a): a for a in agents}
    store = SqlStore(default_sqlite_url(coordinator.data_dir))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            open_round = store.open_round()
            if open_round is not None and open_round.phase is RoundPhase.MASKED_INPUT:
                for p in store.list_participants(open_round.round_id):
                    if p.status is ParticipantStatus.SHARED:
                        victim = by_id[p.client_id]
                        assert victim.process is not None
                        victim.process.send_signal(signal.SIGSTOP)
                        return open_round.round_id, victim
            time.sleep(0.02)
    finally:
        store.close()
    raise TimeoutError(f"no agent was caught training:\n{coordinator.log()[-3000:]}")


def test_an_agent_stopped_past_its_deadline_is_dropped_and_rejoins_when_continued(
    tmp_path: Path,
) -> None:
    coordinator = Coordinator(tmp_path, SETTINGS)
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 5)
    try:
        for agent in agents:
            agent.start()
        round_id, victim = _stop_one_while_training(coordinator, agents)
        try:
            first = coordinator.wait_for(
                lambda s: any(
                    r["round_id"] == round_id and r["outcome"] != "running" for r in s["rounds"]
                ),
                timeout=120,
            )
        finally:
            assert victim.process is not None
            victim.process.send_signal(signal.SIGCONT)
        status = coordinator.wait_for(lambda s: s["model_version"] >= 2, timeout=240)
    finally:
        codes = [agent.stop() for agent in agents]
        coordinator.stop()
    rounds = sorted(status["rounds"], key=lambda r: r["round"])
    assert [(r["outcome"], r["cohort"], r["survivors"]) for r in rounds] == [
        ("committed", 5, 4),
        ("committed", 5, 5),
    ], rounds
    assert rounds[0]["round_id"] == round_id
    assert rounds[0]["dropouts"] == {"masked_input": 1}
    assert first is not None
    assert codes == [0] * 5
    log = victim.log()
    assert f"round {round_id}: dropped" in log, log[-3000:]
    assert f"round {rounds[1]['round_id']}: committed" in log, log[-3000:]
    # the thawed agent did not hammer the coordinator for the round it lost
    assert log.count(f"round {round_id}:") < 20, log[-3000:]
    assert "Traceback" not in log
    matrix.record(
        "agent SIGSTOP",
        "1 of 5 agents stopped while training, continued after the round ended",
        "masked_input",
        "committed 4/5; the next round 5/5",
        "dropped in masked_input; on SIGCONT it logged the round as dropped and rejoined",
    )

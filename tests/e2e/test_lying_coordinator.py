"""Real agents against a coordinator that lies: they refuse, say why, and reveal nothing.

Each test runs ``fedadamw-edge run`` agents (separate processes, mutual TLS, the built-in
digits task) against the real coordinator with one lie injected
(``tests/e2e/lying_coordinator.py``: the honest servicer subclassed, everything else
unchanged). The lies are told to chosen secagg ids; a cohort of n agents gets ids 1..n.

1. A lowered threshold: two of six agents get t = 2 for a complete-graph round whose t is 3
   (six clients, five holders each: 2t must exceed 5). They abort with ``unsafe_threshold``
   before sending a share; the coordinator records no share, input, signature or unmask
   response from them and drops them as ``client_aborted:unsafe_threshold``; the four
   others commit.
2. A split view at the consistency check: agents 4 and 5 are told that agent 6 dropped,
   agents 1, 2, 3 and 6 that it survived. The liar keeps the signatures over the false list
   (the round machine would refuse them) and prompts 4 and 5 with every signature that
   verifies over their view; too few neighbours signed it, so both abort with
   ``too_few_signatures`` and reveal no s-share of agent 6. The four others unmask with
   the true list. The coordinator (its store and what the liar captured) holds b-shares of
   agent 6 but no s-share, never t of both, and the round commits the honest sum. (A split
   that leaves t or fewer signers of the true list ends sooner: the round machine aborts at
   the consistency check.)
3. Overlapping lists: agent 1 is told that agent 4 is both alive and dead. It aborts with
   ``alive_dead_overlap`` and neither signs nor reveals anything; the three others unmask
   the round (agent 1's input included, its self mask removed with their b-shares) and it
   commits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from coordinator.domain import Participant, ParticipantStatus, Round, RoundOutcome, RoundPhase
from coordinator.store.sql import SqlStore, default_sqlite_url

from .harness import FAST, AgentProcess, Coordinator, merged

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = merged(
    FAST,
    rounds=1,
    min_clients=3,
    # wait for the whole cohort (the lies name secagg ids 1..n), then short phases
    deadlines={"selection": 60, "masked_input": 40, "consistency_check": 5},
)


class LyingCoordinator(Coordinator):
    """``python -m tests.e2e.lying_coordinator LIE run ...``, with ``Coordinator``'s ports,
    data directory, configuration, TLS and admin commands."""

    def __init__(self, root: Path, settings: dict[str, Any], lie: Sequence[str]) -> None:
        super().__init__(root, settings)
        self.lie = tuple(lie)

    def start(self, *, timeout: float = 60.0) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.e2e.lying_coordinator",
                *self.lie,
                "run",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                self.address,
                "--enroll-listen",
                self.enroll_address,
                "--metrics-port",
                str(self.metrics_port),
                "--config",
                str(self.config),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self._wait_healthy(timeout)

    def lies(self, round_id: str) -> list[dict[str, Any]]:
        """What the liar recorded for ``round_id``: each lie told and each answer to one."""
        path = self.data_dir / "lies.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [e for e in entries if e["round_id"] == round_id and e["event"] != "received"]

    def received(self, round_id: str, method: str) -> dict[int, dict[str, Any]]:
        """What each participant sent to ``method`` on the honest path, by secagg id."""
        path = self.data_dir / "lies.jsonl"
        entries = [json.loads(line) for line in path.read_text().splitlines() if line]
        return {
            e["secagg_id"]: e
            for e in entries
            if e["round_id"] == round_id and e["event"] == "received" and e["method"] == method
        }

    def store(self) -> SqlStore:
        return SqlStore(default_sqlite_url(self.data_dir))


def _agents(coordinator: Coordinator, root: Path, count: int) -> list[AgentProcess]:
    """``count`` agents enrolled with the CLI (at once: each enrollment is a process)."""
    agents = [AgentProcess(coordinator, root, i, count) for i in range(count)]
    tokens = coordinator.tokens(count)
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(AgentProcess.enroll, agents, tokens))
    for result in results:
        assert result.returncode == 0, result.stderr
    return agents


def _first_round(coordinator: LyingCoordinator, timeout: float = 120) -> Round:
    """The coordinator's first round, once it has ended."""
    deadline = time.monotonic() + timeout
    store = coordinator.store()
    try:
        while True:
            rounds = store.list_rounds()
            if rounds:
                first = min(rounds, key=lambda r: r.number)
                if first.outcome is not RoundOutcome.RUNNING:
                    return first
            if time.monotonic() > deadline:
                raise TimeoutError(f"the first round never ended:\n{coordinator.log()[-4000:]}")
            time.sleep(0.1)
    finally:
        store.close()


def _client_id(agent: AgentProcess) -> int:
    return int(json.loads((agent.state / "agent.json").read_text())["client_id"])


def _by_secagg(
    store: SqlStore, round_id: str, agents: list[AgentProcess]
) -> dict[int, tuple[Participant, AgentProcess]]:
    """Secagg id → (participant, agent) for the round's cohort."""
    by_client = {_client_id(a): a for a in agents}
    return {p.secagg_id: (p, by_client[p.client_id]) for p in store.list_participants(round_id)}


def _run_first_round(
    coordinator: LyingCoordinator, tmp_path: Path, count: int
) -> tuple[Round, list[AgentProcess]]:
    """Start ``count`` agents, wait for the first round to end, stop the agents."""
    agents = _agents(coordinator, tmp_path, count)
    try:
        for agent in agents:
            agent.start()
        first = _first_round(coordinator)
    finally:
        with ThreadPoolExecutor(count) as pool:  # each may take a moment to leave a round
            codes = list(pool.map(AgentProcess.stop, agents))
    assert codes == [0] * count, [a.log()[-2000:] for a in agents]
    return first, agents


def _refused(agent: AgentProcess, round_id: str, reason: str) -> bool:
    return (
        f"round {round_id}: refused (secure aggregation refused the round: {reason}" in agent.log()
    )


def test_a_lowered_threshold_is_refused_before_any_share(tmp_path: Path) -> None:
    coordinator = LyingCoordinator(
        tmp_path,
        merged(SETTINGS, cohort=6),
        ["--lie", "threshold", "--to", "1,2", "--threshold", "2"],
    )
    coordinator.start()
    try:
        first, agents = _run_first_round(coordinator, tmp_path, 6)
        status = coordinator.status()
        store = coordinator.store()
        try:
            cohort = _by_secagg(store, first.round_id, agents)
            shares = store.list_shares(first.round_id)
            chunks = coordinator.received(first.round_id, "UploadMaskedInput")
            signatures = coordinator.received(first.round_id, "SubmitConsistencySignature")
            responses = coordinator.received(first.round_id, "Unmask")
            latest = store.latest_version()
        finally:
            store.close()
    finally:
        coordinator.stop()
    log = coordinator.log()
    rid = first.round_id
    (entry,) = (r for r in status["rounds"] if r["round_id"] == rid)
    assert entry["secure_aggregation"]["threshold"] == 3  # the honest t: 2t > 5 holders
    assert entry["secure_aggregation"]["degree"] is None
    assert entry["cohort"] == 6
    # the lie was told, to the two targets only
    told = coordinator.lies(rid)
    assert sorted((e["secagg_id"], e["event"], e["honest"], e["threshold"]) for e in told) == [
        (1, "told", 3, 2),
        (2, "told", 3, 2),
    ]
    lied_to, honest = {1, 2}, {3, 4, 5, 6}
    for secagg in lied_to:
        participant, agent = cohort[secagg]
        assert participant.status is ParticipantStatus.DROPPED
        assert participant.dropped_in is RoundPhase.SHARE_KEYS
        assert participant.drop_reason == "client_aborted:unsafe_threshold"
        assert _refused(agent, rid, "unsafe_threshold"), agent.log()[-3000:]
        assert "nothing was revealed" in agent.log()
        assert f"client {participant.client_id} left round {rid}: unsafe_threshold" in log
    # no share (nor anything later) ever came from them; the others shared with everyone
    # (the liar's record: the store deletes a round's sealed shares when it ends)
    assert shares == []
    shared = coordinator.received(rid, "ShareKeys")
    assert set(shared) == honest
    assert {(a, b) for a, e in shared.items() for b in e["recipients"]} == {
        (a, b) for a in honest for b in range(1, 7) if a != b
    }
    assert set(chunks) == honest
    assert set(signatures) == honest
    assert set(responses) == honest
    for secagg in honest:
        participant, agent = cohort[secagg]
        assert participant.status is not ParticipantStatus.DROPPED, participant
        assert f"round {rid}: committed" in agent.log()
        assert "refused" not in agent.log()
    # the four honest agents finished the round without them
    assert first.outcome is RoundOutcome.COMMITTED
    assert first.survivors == 4
    assert entry["dropouts"] == {"share_keys": 2}
    assert latest is not None
    assert latest.version == 1


def test_a_split_view_of_the_survivors_unmasks_no_one(tmp_path: Path) -> None:
    victim, told_dead = 6, {4, 5}
    coordinator = LyingCoordinator(
        tmp_path,
        merged(SETTINGS, cohort=6),
        ["--lie", "split", "--to", "4,5", "--about", str(victim)],
    )
    coordinator.start()
    try:
        first, agents = _run_first_round(coordinator, tmp_path, 6)
        store = coordinator.store()
        try:
            cohort = _by_secagg(store, first.round_id, agents)
            signatures = coordinator.received(first.round_id, "SubmitConsistencySignature")
            responses = coordinator.received(first.round_id, "Unmask")
            settings = json.loads(first.config)
            phases = [timing.phase for timing in store.list_phase_timings(first.round_id)]
            latest = store.latest_version()
        finally:
            store.close()
    finally:
        coordinator.stop()
    rid = first.round_id
    t = settings["threshold"]
    assert t == 3
    lies = coordinator.lies(rid)
    events = {(e["secagg_id"], e["event"]) for e in lies}
    # told 6 dropped, they believed it and signed the false list (nothing shows it false yet)
    for secagg in told_dead:
        (told,) = (e for e in lies if e["secagg_id"] == secagg and e["event"] == "told")
        assert (told["alive"], told["dead"]) == ([1, 2, 3, 4, 5], [victim])
        assert (secagg, "signed") in events
        (prompt,) = (e for e in lies if e["secagg_id"] == secagg and e["event"] == "prompted")
        assert prompt["signers"] == sorted(told_dead)  # every signature valid over their view
    assert {e["secagg_id"] for e in lies} == told_dead
    # the round machine saw only the true view's signatures
    assert set(signatures) == {1, 2, 3, victim}
    # what the coordinator obtained: shares of the victim in the store, and captured by
    # the liar from the agents told it dropped
    unmasked = coordinator.received(rid, "Unmask")  # the store deletes them at the round's end
    assert set(unmasked) == set(responses)
    b_shares = sum(e["self_mask_owners"].count(victim) for e in unmasked.values())
    s_shares = sum(e["key_owners"].count(victim) for e in unmasked.values())
    for e in lies:
        if e["event"] == "revealed":
            b_shares += e["self_mask_owners"].count(victim)
            s_shares += e["key_owners"].count(victim)
    assert not (b_shares >= t and s_shares >= t)
    assert s_shares == 0  # the agents told "dead" revealed nothing
    assert b_shares == 3  # agents 1-3, told the truth, revealed 6's b-share as they should
    assert not any(e["event"] == "revealed" for e in lies)
    for secagg, (participant, agent) in cohort.items():
        if secagg in told_dead:  # too few neighbours signed the list they were shown
            assert _refused(agent, rid, "too_few_signatures"), (secagg, agent.log()[-3000:])
            assert participant.status is ParticipantStatus.DROPPED
            assert participant.dropped_in is RoundPhase.CONSISTENCY_CHECK
            assert participant.drop_reason == "no_response"  # as far as the machine knows
        else:
            assert f"round {rid}: committed" in agent.log()
    # their inputs were summed before the lie, and the true view unmasks them all
    assert first.outcome is RoundOutcome.COMMITTED
    assert first.survivors == 6
    assert phases[-1] is RoundPhase.UNMASKING
    assert latest is not None
    assert latest.version == 1


def test_overlapping_alive_and_dead_lists_reveal_nothing(tmp_path: Path) -> None:
    listed_twice = 4
    coordinator = LyingCoordinator(
        tmp_path,
        merged(SETTINGS, cohort=4),
        ["--lie", "overlap", "--to", "1", "--about", str(listed_twice)],
    )
    coordinator.start()
    try:
        first, agents = _run_first_round(coordinator, tmp_path, 4)
        store = coordinator.store()
        try:
            cohort = _by_secagg(store, first.round_id, agents)
            chunks = coordinator.received(first.round_id, "UploadMaskedInput")
            signatures = coordinator.received(first.round_id, "SubmitConsistencySignature")
            responses = coordinator.received(first.round_id, "Unmask")
            latest = store.latest_version()
        finally:
            store.close()
    finally:
        coordinator.stop()
    rid = first.round_id
    (told,) = coordinator.lies(rid)
    assert (told["secagg_id"], told["event"]) == (1, "told")
    assert (told["alive"], told["dead"]) == ([1, 2, 3, 4], [listed_twice])
    participant, agent = cohort[1]
    assert _refused(agent, rid, "alive_dead_overlap"), agent.log()[-3000:]
    assert participant.status is ParticipantStatus.DROPPED
    assert participant.dropped_in is RoundPhase.CONSISTENCY_CHECK
    assert participant.drop_reason == "client_aborted:alive_dead_overlap"
    expected = f"client {participant.client_id} left round {rid}: alive_dead_overlap"
    assert expected in coordinator.log()
    assert 1 in set(chunks)  # its masked input was in before the lie
    # it neither signed nor revealed a share; the others did, b-shares only (no one dropped)
    assert set(signatures) == {2, 3, 4}
    assert set(responses) == {2, 3, 4}
    unmasked = coordinator.received(rid, "Unmask")  # the store deletes them at the round's end
    assert set(unmasked) == {2, 3, 4}
    for secagg, entry in unmasked.items():
        assert set(entry["self_mask_owners"]) == {1, 2, 3, 4} - {secagg}
        assert entry["key_owners"] == []
    for secagg in (2, 3, 4):
        assert f"round {rid}: committed" in cohort[secagg][1].log()
    assert first.outcome is RoundOutcome.COMMITTED
    assert first.survivors == 4
    assert latest is not None
    assert latest.version == 1


def test_a_layout_that_does_not_fit_the_task_is_refused_and_the_agent_keeps_running(
    tmp_path: Path,
) -> None:
    # Found by fuzzing the agent's inputs: a layout naming segments the task does not
    # produce made the update's encoding raise out of the round, and the agent died of it.
    coordinator = LyingCoordinator(
        tmp_path, merged(SETTINGS, cohort=4, min_clients=3), ["--lie", "layout", "--to", "1"]
    )
    coordinator.start()
    try:
        agents = _agents(coordinator, tmp_path, 4)
        for agent in agents:
            agent.start()
        first = _first_round(coordinator)
        alive = [agent.running for agent in agents]
        store = coordinator.store()
        try:
            cohort = _by_secagg(store, first.round_id, agents)
        finally:
            store.close()
    finally:
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(AgentProcess.stop, agents))
        coordinator.stop()
    rid = first.round_id
    assert [(e["secagg_id"], e["event"]) for e in coordinator.lies(rid)] == [(1, "told")]
    assert alive == [True] * 4
    assert codes == [0] * 4
    participant, lied_to = cohort[1]
    assert participant.status is ParticipantStatus.DROPPED
    log = lied_to.log()
    assert f"round {rid}: refused (the round's quantization layout does not fit" in log, log[-3000:]
    assert "Traceback" not in log
    assert first.outcome is RoundOutcome.COMMITTED
    assert first.survivors == 3

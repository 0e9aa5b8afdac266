"""SIGKILL of k agents (real ``fedadamw-edge run`` processes) in the middle of rounds, up to
and past the threshold.

Five agents train the digits task over secure rounds. One agent is killed at a time: while
it trains (its keys shared, no input yet), after its upload, and after it signed. Each
round commits with the survivors, the victim counted in the phase where it stopped (and its
input summed when it was whole), and the victim, started again, is back for the next
round. Then three of five are killed while training: below the threshold, that round
aborts (too_few_clients), and the next one, with them back, commits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from coordinator.domain import ParticipantStatus, RoundPhase
from tests.e2e.harness import Coordinator, enrolled_agents, merged
from tests.e2e.test_agents import TRAIN, _finished, _kill_when, _stop_all
from tests.faults import matrix


def test_agents_killed_mid_round(tmp_path: Path) -> None:
    settings = merged(
        TRAIN,
        rounds=9,  # room for a case to be tried again when its kill lands a moment late
        local_steps=100,  # long enough to be killed while training
        # every round waits for all five agents, so each case meets a full cohort
        deadlines={"selection": 90, "masked_input": 15, "consistency_check": 6, "unmasking": 6},
    )
    coordinator = Coordinator(tmp_path, settings)
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 5)
    # (where the victim is, the phase its coordinator records it dropped in, inputs summed)
    cases: list[tuple[Callable[[RoundPhase, ParticipantStatus], bool], str, int]] = [
        # while training: keys shared, input not uploaded yet -> not summed
        (
            lambda phase, status: (
                phase is RoundPhase.MASKED_INPUT and status is ParticipantStatus.SHARED
            ),
            "masked_input",
            4,
        ),
        # after its upload, waiting for the others -> summed, but never signs
        (
            lambda phase, status: (
                phase is RoundPhase.MASKED_INPUT and status is ParticipantStatus.UPLOADED
            ),
            "consistency_check",
            5,
        ),
        # after signing, before revealing its shares -> dropped in unmasking
        (
            lambda phase, status: (
                phase in (RoundPhase.CONSISTENCY_CHECK, RoundPhase.UNMASKING)
                and status is ParticipantStatus.SIGNED
            ),
            "unmasking",
            5,
        ),
    ]
    hit: list[dict[str, object]] = []
    try:
        for agent in agents:
            agent.start()
        for condition, dropped_in, summed in cases:
            # The kill races the agent: one that lands after the agent moved on leaves no
            # dropout, and the case is tried again in the next round. Every round commits.
            for _attempt in range(3):
                round_id, (victim,) = _kill_when(coordinator, agents, condition)
                finished = _finished(coordinator, round_id)
                victim.start()  # it comes back, with fresh keys, for the next round
                assert finished["outcome"] == "committed", finished
                if finished["dropouts"]:
                    break
            assert finished["dropouts"] == {dropped_in: 1}, finished
            assert finished["survivors"] == summed, finished
            hit.append(finished)
        # beyond threshold: three of five die while training; the round aborts
        for _attempt in range(3):
            round_id, victims = _kill_when(
                coordinator,
                agents,
                lambda phase, status: (
                    phase is RoundPhase.MASKED_INPUT and status is ParticipantStatus.SHARED
                ),
                count=3,
            )
            aborted = _finished(coordinator, round_id, timeout=180)
            for victim in victims:
                victim.start()
            if len(victims) == 3:
                break
        # the next round, with the agents back, commits
        status = coordinator.wait_for(
            lambda s: any(
                r["round"] > aborted["round"] and r["outcome"] == "committed" for r in s["rounds"]
            ),
            timeout=300,
        )
    finally:
        _stop_all(agents)
        coordinator.stop()
    assert aborted["outcome"] == "aborted"
    assert aborted["abort_reason"] == "too_few_clients"
    assert aborted["dropouts"] == {"masked_input": 3}
    rounds = sorted(status["rounds"], key=lambda r: r["round"])
    assert [r["outcome"] for r in rounds].count("aborted") == 1  # only the one beyond threshold
    assert len(hit) == 3
    where = ("while training", "after its upload", "after signing")
    for (_, dropped_in, summed), when, finished in zip(cases, where, hit, strict=True):
        matrix.record(
            "agents SIGKILL",
            f"1 of 5 agents killed {when}",
            dropped_in,
            f"committed {finished['survivors']}/5",
            f"dropped in {dropped_in}; its input {'summed' if summed == 5 else 'not summed'}; "
            "back the next round",
        )
    matrix.record(
        "agents SIGKILL",
        "3 of 5 killed while training (past the threshold)",
        "masked_input",
        "aborted (too_few_clients)",
        "the next round, with them back, committed; one abort in all",
    )

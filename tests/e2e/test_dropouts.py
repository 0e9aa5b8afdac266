"""Dropouts at every phase over real gRPC and TLS: within threshold the round commits the
mean of exactly the inputs it summed; below threshold it aborts, and the next round runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from coordinator.blobs import BlobStore
from coordinator.store.sql import SqlStore, default_sqlite_url
from edge_client.session import Outcome, RoundInputs, RoundSession, SessionError
from wire.v1 import edge_pb2 as pb

from .harness import FAST, Coordinator, TestAgent, merged

T = TypeVar("T")

PHASE_OF_CALL = {
    "AdvertiseKeys": pb.PHASE_ADVERTISE_KEYS,
    "ShareKeys": pb.PHASE_SHARE_KEYS,
    "SubmitConsistencySignature": pb.PHASE_CONSISTENCY_CHECK,
    "Unmask": pb.PHASE_UNMASKING,
}

SHORT = merged(
    FAST,
    deadlines={
        "advertise_keys": 4,
        "share_keys": 4,
        "masked_input": 8,
        "consistency_check": 4,
        "unmasking": 4,
    },
)


class DroppingSession(RoundSession):
    """An agent that goes silent instead of sending its message for ``stop_at``."""

    stop_at: int = pb.PHASE_UNSPECIFIED

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        if PHASE_OF_CALL.get(what) == self.stop_at:
            raise SessionError(Outcome.DROPPED, f"test agent goes silent before {what}")
        return await super()._call(what, call)

    async def _upload(self, config: pb.RoundConfig, vector: np.ndarray) -> None:
        if self.stop_at == pb.PHASE_MASKED_INPUT:
            raise SessionError(Outcome.DROPPED, "test agent goes silent before uploading")
        await super()._upload(config, vector)


def _dropping(phase: int) -> type[DroppingSession]:
    return type(f"DropAt{phase}", (DroppingSession,), {"stop_at": phase})


class Known:
    """A client's update: fixed random values, remembered for the check."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.sent: dict[str, np.ndarray] = {}

    def __call__(self, inputs: RoundInputs) -> dict[str, np.ndarray]:
        self.sent = {
            "delta": self.rng.uniform(-0.01, 0.01, size=inputs.model.shape[0]),
            "weight": np.ones(1),
            "samples": np.array([32.0]),
            "train_loss": np.array([1.0]),
        }
        if inputs.second_moment.shape[0]:
            self.sent["second_moment"] = self.rng.uniform(
                0, 1e-3, size=inputs.second_moment.shape[0]
            )
        return self.sent


def _versions(coordinator: Coordinator) -> list[np.ndarray]:
    store = SqlStore(default_sqlite_url(coordinator.data_dir))
    blobs = BlobStore(coordinator.data_dir / "blobs")
    try:
        return [
            blobs.read_array(v.model_sha256, "<f4").astype(np.float64)
            for v in store.list_versions()
        ]
    finally:
        store.close()


# The phase the dropping agent misses, and whether its input is in the sum anyway
# (after its masked input arrived, it counts among the survivors U3).
CASES = [
    (pb.PHASE_ADVERTISE_KEYS, False),
    (pb.PHASE_SHARE_KEYS, False),
    (pb.PHASE_MASKED_INPUT, False),
    (pb.PHASE_CONSISTENCY_CHECK, True),
    (pb.PHASE_UNMASKING, True),
]


def test_rounds_commit_with_a_dropout_at_every_phase(tmp_path: Path) -> None:
    # every version's model is compared, so retention keeps them all
    settings = merged(
        SHORT, rounds=len(CASES), cohort=5, retention={"keep_versions": len(CASES) + 1}
    )
    coordinator = Coordinator(tmp_path, settings)
    coordinator.start()
    try:

        async def scenario() -> list[list[Known]]:
            agents = await TestAgent.many(coordinator, tmp_path, 5)
            contributions = []
            try:
                for r, (phase, counted) in enumerate(CASES):
                    updates = [Known(100 * r + i) for i in range(5)]
                    sessions = [
                        a.run_round(u, _dropping(phase) if i == 0 else RoundSession)
                        for i, (a, u) in enumerate(zip(agents, updates, strict=True))
                    ]
                    results = await asyncio.gather(*sessions)
                    assert results[0].outcome is Outcome.DROPPED, (phase, results[0])
                    assert all(r.outcome is Outcome.COMMITTED for r in results[1:]), results
                    contributions.append(updates if counted else updates[1:])
            finally:
                for a in agents:
                    await a.close()
            return contributions

        contributions = asyncio.run(scenario())
        versions = _versions(coordinator)
        assert len(versions) == len(CASES) + 1
        for r, included in enumerate(contributions):
            expected = versions[r] + np.mean([u.sent["delta"] for u in included], axis=0)
            np.testing.assert_allclose(versions[r + 1], expected, atol=2e-6, err_msg=f"round {r}")
        status = coordinator.status()
        rounds = sorted(status["rounds"], key=lambda r: r["round"])
        assert [r["outcome"] for r in rounds] == ["committed"] * len(CASES)
        assert [r["survivors"] for r in rounds] == [4, 4, 4, 5, 5]
        dropped_in = [next(iter(r["dropouts"])) for r in rounds]
        assert dropped_in == [
            "advertise_keys",
            "share_keys",
            "masked_input",
            "consistency_check",
            "unmasking",
        ]
    finally:
        coordinator.stop()


def test_below_threshold_the_round_aborts_and_the_next_one_commits(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, merged(SHORT, rounds=1, cohort=4, min_clients=3))
    coordinator.start()
    try:

        async def scenario() -> None:
            agents = await TestAgent.many(coordinator, tmp_path, 4)
            try:
                first = await asyncio.gather(
                    *(
                        a.run_round(
                            Known(i), _dropping(pb.PHASE_SHARE_KEYS) if i < 2 else RoundSession
                        )
                        for i, a in enumerate(agents)
                    )
                )
                assert [r.outcome for r in first[2:]] == [Outcome.ABORTED] * 2, first
                second = await asyncio.gather(
                    *(a.run_round(Known(10 + i)) for i, a in enumerate(agents))
                )
                assert [r.outcome for r in second] == [Outcome.COMMITTED] * 4, second
            finally:
                for a in agents:
                    await a.close()

        asyncio.run(scenario())
        status = coordinator.status()
        rounds = sorted(status["rounds"], key=lambda r: r["round"])
        assert [r["outcome"] for r in rounds] == ["aborted", "committed"]
        assert rounds[0]["abort_reason"] == "too_few_clients"
        assert rounds[0]["committed_version"] is None
        assert status["model_version"] == 1
        assert len(_versions(coordinator)) == 2  # the aborted round wrote no version
    finally:
        coordinator.stop()


def test_plain_sum_mode_commits_the_same_rule(tmp_path: Path) -> None:
    settings = merged(FAST, secure_aggregation={"enabled": False})
    coordinator = Coordinator(tmp_path, settings)
    coordinator.start()
    try:

        async def scenario() -> list[Known]:
            agents = await TestAgent.many(coordinator, tmp_path, 4)
            updates = [Known(i) for i in range(4)]
            try:
                results = await asyncio.gather(
                    *(a.run_round(u) for a, u in zip(agents, updates, strict=True))
                )
                assert [r.outcome for r in results] == [Outcome.COMMITTED] * 4
            finally:
                for a in agents:
                    await a.close()
            return updates

        updates = asyncio.run(scenario())
        x0, x1 = _versions(coordinator)
        np.testing.assert_allclose(
            x1, x0 + np.mean([u.sent["delta"] for u in updates], axis=0), atol=2e-6
        )
        assert "PLAIN sums" in coordinator.log()
        (round0,) = coordinator.status()["rounds"]
        assert round0["secure_aggregation"] is None
        (row,) = [
            line
            for line in coordinator.cli("status").stdout.splitlines()
            if line.split()[:2] == ["0", "committed"]
        ]
        assert row.split()[7] == "plain"  # the secure-aggregation column
    finally:
        coordinator.stop()

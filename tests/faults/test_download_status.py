"""A download whose status is lost after its last chunk: the agent keeps the blob it has.

A reset that lands after the last chunk of a ``DownloadBlob`` stream but before its status
reaches the agent leaves every byte of the blob on the agent's side and a call that failed
(UNAVAILABLE). The agent must not ask for the blob again, nor wait a backoff for it: the
size says it is whole, and the sha256 check decides (``edge_client.transfers``).

A real coordinator process (mutual TLS, SQLite) runs a secure round with three in-process
agents. One agent's stub loses the status of every download stream once its chunks have
all arrived, as such a reset would: its stream yields what the coordinator sent, then the
call fails with UNAVAILABLE. The round must commit to the exact mean, the agent must have
asked for each blob once, slept no backoff, and kept the blobs whole in its cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from coordinator.blobs import BlobStore
from edge_client.session import Outcome
from tests.e2e.harness import FAST, Coordinator, TestAgent, merged
from tests.e2e.test_dropouts import Known
from tests.faults.test_crash import _store
from wire.v1 import edge_pb2 as pb

SETTINGS = merged(FAST, cohort=3, min_clients=3)


class StatusLostStub:
    """Forwards to ``stub``; every ``DownloadBlob`` stream ends in UNAVAILABLE after its
    last chunk in place of its OK status."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.requests: list[tuple[str, int]] = []  # (sha256, start_chunk) asked for
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def DownloadBlob(self, request: pb.DownloadRequest, **kwargs: Any) -> AsyncIterator[Any]:  # noqa: N802 (the RPC's name)
        self.requests.append((request.sha256, request.start_chunk))
        return self._status_lost(self._stub.DownloadBlob(request, **kwargs))

    async def _status_lost(self, call: Any) -> AsyncIterator[Any]:
        async for chunk in call:
            yield chunk
        self.lost += 1
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="Socket closed",
        )


def test_a_download_status_lost_after_the_last_chunk_keeps_the_blob(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, SETTINGS)
    coordinator.start()
    try:

        async def scenario() -> tuple[list[Known], StatusLostStub, list[float], Path]:
            agents = await TestAgent.many(coordinator, tmp_path, 3)
            updates = [Known(i) for i in range(3)]
            lossy = StatusLostStub(agents[0].stub)
            slept: list[float] = []

            async def sleep(seconds: float) -> None:
                slept.append(seconds)
                await asyncio.sleep(seconds)

            try:
                assignments = await asyncio.gather(*(a.assignment() for a in agents))
                sessions = [
                    a.session(assignment, u)
                    for a, assignment, u in zip(agents, assignments, updates, strict=True)
                ]
                sessions[0].stub = lossy  # type: ignore[assignment]
                sessions[0].sleep = sleep
                results = await asyncio.gather(*(s.run() for s in sessions))
                assert [r.outcome for r in results] == [Outcome.COMMITTED] * 3, results
            finally:
                for a in agents:
                    await a.close()
            return updates, lossy, slept, agents[0].cache

        updates, lossy, slept, cache = asyncio.run(scenario())
    finally:
        coordinator.stop()

    # x, ΔG and v̄, each asked for once from its first chunk, each status lost
    assert len(lossy.requests) == 3, lossy.requests
    assert [start for _, start in lossy.requests] == [0, 0, 0]
    assert lossy.lost == 3
    assert slept == []  # no backoff for a blob already whole
    for sha, _ in lossy.requests:
        assert (cache / sha).is_file(), sorted(p.name for p in cache.iterdir())
    assert not list(cache.glob("*.part"))
    store = _store(coordinator)
    blobs = BlobStore(coordinator.data_dir / "blobs")
    try:
        versions = store.list_versions()
        x0, x1 = (blobs.read_array(v.model_sha256, "<f4").astype(np.float64) for v in versions)
    finally:
        store.close()
    np.testing.assert_allclose(
        x1, x0 + np.mean([u.sent["delta"] for u in updates], axis=0), atol=2e-6
    )

"""The round driver survives a fault of its disk: it says so, retries, and resumes.

The blob directory stops working while a round commits (it is replaced by a plain file, so
every read and write under it fails, whoever runs the test, root included), then works
again. Meanwhile the coordinator must not pretend: the driver logs the fault at ERROR,
counts it, sets ``fedadamw_round_driver_stalled`` and the health service answers
NOT_SERVING. Once the directory is back, the round commits the exact mean of every
acknowledged input, the next round commits too, and the health service serves again.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.blobs import BlobStore
from coordinator.domain import ParticipantStatus, RoundPhase
from edge_client.session import Outcome, RoundSession
from tests.e2e.harness import FAST, Coordinator, TestAgent, merged
from tests.e2e.test_dropouts import Known
from tests.faults import matrix
from tests.faults.test_crash import _gated, _store, _wait_durable
from wire.v1 import edge_pb2 as pb

SETTINGS = merged(
    FAST,
    rounds=2,
    cohort=3,
    min_clients=3,
    deadlines={
        "advertise_keys": 60,
        "share_keys": 60,
        "masked_input": 60,
        "consistency_check": 60,
        "unmasking": 60,
        "restart_grace": 30,
    },
)


def _metric(coordinator: Coordinator, name: str) -> float:
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _health(coordinator: Coordinator) -> int:
    ca = coordinator.ca_pem
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(coordinator.enroll_address, credentials) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    return int(answer.status)


def _until(check: object, what: str, coordinator: Coordinator, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} never happened:\n{coordinator.log()[-4000:]}")


def test_an_unwritable_blob_store_at_commit_stalls_loudly_then_the_round_commits(
    tmp_path: Path,
) -> None:
    coordinator = Coordinator(tmp_path, SETTINGS)
    coordinator.start()
    blobs = coordinator.data_dir / "blobs"
    away = coordinator.data_dir / "blobs.away"
    try:

        async def scenario() -> list[Known]:
            agents = await TestAgent.many(coordinator, tmp_path, 3)
            gates = {pb.PHASE_UNMASKING: asyncio.Event()}
            updates = [Known(i) for i in range(3)]
            try:
                assignments = await asyncio.gather(*(a.assignment() for a in agents))
                runs = [
                    asyncio.ensure_future(a.session(assignment, u, _gated(gates)).run())
                    for a, assignment, u in zip(agents, assignments, updates, strict=True)
                ]
                ids = {a.credentials.client_id for a in agents}
                await asyncio.to_thread(
                    _wait_durable, coordinator, RoundPhase.UNMASKING, ParticipantStatus.SIGNED, ids
                )
                blobs.rename(away)
                blobs.write_bytes(b"not a directory")
                gates[pb.PHASE_UNMASKING].set()

                def stalled() -> bool:
                    return _metric(coordinator, "fedadamw_round_driver_stalled") == 1

                await asyncio.to_thread(_until, stalled, "a stalled driver", coordinator)
                assert (
                    _metric(
                        coordinator,
                        'fedadamw_round_driver_faults_total{kind="storage_unavailable",stage="commit"}',
                    )
                    >= 1
                )
                assert await asyncio.to_thread(_health, coordinator) == (
                    health_pb2.HealthCheckResponse.NOT_SERVING
                )
                log = coordinator.log()
                assert "round driver: BlobError while it was to commit" in log
                assert "ERROR" in log
                await asyncio.sleep(2)  # it keeps retrying, with backoff, not in a hot loop
                faults = _metric(coordinator, "fedadamw_round_driver_faults_total")
                assert 1 <= faults <= 4, faults

                blobs.unlink()
                away.rename(blobs)
                results = await asyncio.gather(*runs)
                assert [r.outcome for r in results] == [Outcome.COMMITTED] * 3, results
                assert _metric(coordinator, "fedadamw_round_driver_stalled") == 0
                assert await asyncio.to_thread(_health, coordinator) == (
                    health_pb2.HealthCheckResponse.SERVING
                )
                # The next round commits as usual.
                again = await asyncio.gather(
                    *(a.run_round(Known(10 + i), RoundSession) for i, a in enumerate(agents))
                )
                assert [r.outcome for r in again] == [Outcome.COMMITTED] * 3, again
            finally:
                for a in agents:
                    await a.close()
            return updates

        updates = asyncio.run(scenario())
        assert "round driver: recovered after" in coordinator.log()
        store = _store(coordinator)
        blob_store = BlobStore(blobs)
        try:
            versions = store.list_versions()
            assert [v.version for v in versions] == [0, 1, 2]
            x0, x1 = (
                blob_store.read_array(v.model_sha256, "<f4").astype(np.float64)
                for v in versions[:2]
            )
            assert [r.outcome.value for r in store.list_rounds()] == ["committed", "committed"]
        finally:
            store.close()
        np.testing.assert_allclose(
            x1, x0 + np.mean([u.sent["delta"] for u in updates], axis=0), atol=2e-6
        )
        matrix.record(
            "blob store read-only",
            "blob directory replaced by a file (unusable even for root)",
            "unmasking (commit)",
            "committed 3/3, exact mean; the next round too",
            "driver stalled: ERROR, driver_faults_total{stage=commit}, NOT_SERVING; 1-4 retries "
            "in 2 s; recovered",
        )
    finally:
        if away.exists():
            if blobs.is_file():
                blobs.unlink()
            away.rename(blobs)
        coordinator.stop()

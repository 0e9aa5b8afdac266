"""The coordinator over real gRPC and TLS, driven by agents built on the generated stubs and
the real ``secure_agg`` client: the committed model follows the server rule exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from coordinator.blobs import BlobStore
from coordinator.store.sql import SqlStore, default_sqlite_url
from edge_client.session import Outcome, RoundInputs

from .harness import FAST, Coordinator, TestAgent


def _known_update(seed: int, clip: float = 0.02):
    rng = np.random.default_rng(seed)

    def compute(inputs: RoundInputs) -> dict[str, np.ndarray]:
        d = inputs.model.shape[0]
        blocks = inputs.second_moment.shape[0]
        out = {
            "delta": rng.uniform(-clip, clip, size=d),
            "weight": np.ones(1),
            "samples": np.array([64.0]),
            "train_loss": np.array([0.5 + seed]),
        }
        if blocks:
            out["second_moment"] = rng.uniform(0, 1e-3, size=blocks)
        compute.sent = out  # type: ignore[attr-defined]
        return out

    return compute


@pytest.fixture
def coordinator(tmp_path: Path):
    c = Coordinator(tmp_path, FAST)
    c.start()
    yield c
    c.stop()


def test_a_secure_round_commits_the_mean_of_the_survivors(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    async def scenario():
        agents = await TestAgent.many(coordinator, tmp_path, 4)
        computes = [_known_update(i) for i in range(4)]
        try:
            return await asyncio.gather(
                *(a.run_round(c) for a, c in zip(agents, computes, strict=True))
            ), computes
        finally:
            for a in agents:
                await a.close()

    results, computes = asyncio.run(scenario())
    assert [r.outcome for r in results] == [Outcome.COMMITTED] * 4
    assert {r.model_version for r in results} == {1}
    store = SqlStore(default_sqlite_url(coordinator.data_dir))
    blobs = BlobStore(coordinator.data_dir / "blobs")
    v0, v1 = store.get_version(0), store.get_version(1)
    x0 = blobs.read_array(v0.model_sha256, "<f4").astype(np.float64)
    x1 = blobs.read_array(v1.model_sha256, "<f4").astype(np.float64)
    mean_delta = np.mean([c.sent["delta"] for c in computes], axis=0)
    step = 2 * 0.02 * 2 / 2**17  # delta clip is 2·K·lr = 0.04 wide each way; generous
    np.testing.assert_allclose(x1, x0 + mean_delta, atol=step + 1e-6)
    dg = blobs.read_array(v1.global_update_sha256, "<f4").astype(np.float64)
    np.testing.assert_allclose(dg, -(x1 - x0) / (2 * 0.01), rtol=1e-3, atol=1e-4)
    vbar = blobs.read_array(v1.second_moment_sha256, "<f8")
    np.testing.assert_allclose(
        vbar, np.mean([c.sent["second_moment"] for c in computes], axis=0), atol=1e-9
    )
    assert v1.global_step == 2
    assert v1.num_clients == 4
    store.close()
    status = coordinator.status()
    assert status["model_version"] == 1
    (round0,) = status["rounds"]
    assert round0["outcome"] == "committed"
    assert round0["cohort"] == 4
    assert round0["survivors"] == 4
    # training statistics arrive only summed: mean loss (0.5 + 1.5), 4 × 64 samples
    assert "mean train loss 2.0000, 256 samples" in coordinator.log()

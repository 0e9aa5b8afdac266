"""The coordinator's /metrics after a real round: valid for promtool, with every family."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from edge_client.session import Outcome

from .harness import FAST, Coordinator, TestAgent
from .test_dropouts import Known

FAMILIES = [
    "fedadamw_rounds_total",
    "fedadamw_round_duration_seconds",
    "fedadamw_round_phase_duration_seconds",
    "fedadamw_round_phase",
    "fedadamw_round_cohort_clients",
    "fedadamw_round_survivors_clients",
    "fedadamw_round_dropouts_total",
    "fedadamw_connected_clients",
    "fedadamw_enrolled_clients",
    "fedadamw_received_bytes_total",
    "fedadamw_sent_bytes_total",
    "fedadamw_secagg_unmask_duration_seconds",
    "fedadamw_secagg_clipped_values_total",
    "fedadamw_model_version",
    "fedadamw_trained_samples_total",
    "fedadamw_round_train_loss",
    "fedadamw_global_test_loss",
    "fedadamw_global_test_accuracy_ratio",
    "fedadamw_grpc_requests_total",
    "fedadamw_grpc_request_duration_seconds",
]


def _promtool() -> str | None:
    return shutil.which("promtool") or (
        str(Path(sys.executable).parent / "promtool")
        if (Path(sys.executable).parent / "promtool").exists()
        else None
    )


def _sample(text: str, prefix: str) -> float:
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == prefix:
            return float(value)
    raise AssertionError(f"no sample {prefix!r} in /metrics")


def test_metrics_after_a_round(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, FAST)
    coordinator.start()
    try:

        async def scenario() -> None:
            agents = await TestAgent.many(coordinator, tmp_path, 4)
            try:
                results = await asyncio.gather(
                    *(a.run_round(Known(i)) for i, a in enumerate(agents))
                )
                assert [r.outcome for r in results] == [Outcome.COMMITTED] * 4
            finally:
                for a in agents:
                    await a.close()

        asyncio.run(scenario())
        coordinator.wait_for(lambda s: s["test_loss"] is not None)
        url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        coordinator.stop()

    for family in FAMILIES:
        assert f"# TYPE {family} " in text, family
    assert _sample(text, 'fedadamw_rounds_total{outcome="committed"}') == 1
    assert _sample(text, "fedadamw_model_version") == 1
    assert _sample(text, "fedadamw_round_survivors_clients") == 4
    assert _sample(text, "fedadamw_round_cohort_clients") == 4
    assert _sample(text, 'fedadamw_grpc_requests_total{code="OK",method="AdvertiseKeys"}') == 4
    assert _sample(text, 'fedadamw_received_bytes_total{kind="masked_input"}') > 4 * 38282 * 4
    assert 0 <= _sample(text, "fedadamw_global_test_accuracy_ratio") <= 1

    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool is not installed (make installs it from Debian's prometheus package)")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr

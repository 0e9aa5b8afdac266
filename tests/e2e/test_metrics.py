"""The coordinator's /metrics after a real round: valid for promtool, with every family."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from edge_client.session import Outcome
from wire.v1 import edge_pb2 as pb

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
    "fedadamw_round_aborts_total",
    "fedadamw_configured_rounds",
    "fedadamw_selected_clients_total",
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


def _listening_on(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def test_metrics_after_a_round(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, FAST)
    coordinator.start()
    try:

        async def scenario() -> None:
            agents = await TestAgent.many(coordinator, tmp_path, 4)
            try:
                # a check-in its agent gives up while it is held is counted as CANCELLED
                held = agents[0].stub.CheckIn(
                    pb.CheckInRequest(task="digits-cnn", wait_seconds=2), timeout=10
                )
                await asyncio.sleep(0.5)
                held.cancel()
                await asyncio.sleep(0.5)
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
        # --listen 127.0.0.1:PORT and no --metrics-host: /metrics listens on loopback only
        assert _listening_on(coordinator.metrics_port) == {"127.0.0.1"}
    finally:
        coordinator.stop()

    for family in FAMILIES:
        assert f"# TYPE {family} " in text, family
    assert _sample(text, 'fedadamw_rounds_total{outcome="committed"}') == 1
    assert _sample(text, "fedadamw_model_version") == 1
    assert _sample(text, "fedadamw_configured_rounds") == 1
    assert _sample(text, "fedadamw_selected_clients_total") == 4
    assert _sample(text, "fedadamw_round_survivors_clients") == 4
    assert _sample(text, "fedadamw_round_cohort_clients") == 4
    assert _sample(text, 'fedadamw_grpc_requests_total{code="OK",method="AdvertiseKeys"}') == 4
    assert _sample(text, 'fedadamw_grpc_requests_total{code="CANCELLED",method="CheckIn"}') == 1
    assert _sample(text, 'fedadamw_received_bytes_total{kind="masked_input"}') > 4 * 38282 * 4
    assert 0 <= _sample(text, "fedadamw_global_test_accuracy_ratio") <= 1

    promtool = _promtool()
    assert promtool is not None, "promtool is missing: `make` installs it from Debian's prometheus"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # The dashboard and the alert rules query only metrics the coordinator exports.
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for source, names in _queried_names().items():
        unknown = {n for n in names if _family(n) not in exported}
        assert not unknown, f"{source} queries metrics the coordinator does not export: {unknown}"


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _family(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _queried_names() -> dict[str, set[str]]:
    """fedadamw_* names in the Grafana dashboard's and the alert rules' expressions."""
    pattern = re.compile(r"\bfedadamw_[a-z_]+")
    dashboard = json.loads((DEPLOY / "grafana" / "fedadamw-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alert_exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    names = {
        "dashboard": {n for e in exprs for n in pattern.findall(e)},
        "alert rules": {n for e in alert_exprs for n in pattern.findall(e)},
    }
    assert names["dashboard"], "the dashboard has no fedadamw queries"
    return names

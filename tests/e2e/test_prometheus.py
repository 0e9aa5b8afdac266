"""A real Prometheus server scrapes a running coordinator and agent on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from .harness import FAST, Coordinator, enrolled_agents, free_port, merged

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _prometheus() -> str:
    found = shutil.which("prometheus") or str(Path(sys.executable).parent / "prometheus")
    assert Path(found).exists(), "prometheus is missing: `make` installs it from Debian's package"
    return found


def _query(port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert answer["status"] == "success", answer
    result: list[dict[str, object]] = answer["data"]["result"]
    return result


def _wait_value(port: int, expr: str, want: float, timeout: float = 90) -> float:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            result = _query(port, expr)
        except OSError:
            result = []
        if result:
            value = float(result[0]["value"][1])  # type: ignore[index]
            if value >= want:
                return value
        time.sleep(0.5)
    raise TimeoutError(f"{expr} never reached {want} (last {value})")


def test_prometheus_scrapes_coordinator_and_agent(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, merged(FAST, rounds=2, cohort=3, min_clients=3))
    coordinator.start()
    agents = enrolled_agents(coordinator, tmp_path, 3)
    agent_port, prometheus_port = free_port(), free_port()
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n  - alerts.yml\n"
        "scrape_configs:\n"
        "  - job_name: fedadamw-coordinator\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{coordinator.metrics_port}']\n"
        "  - job_name: fedadamw-edge\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{agent_port}']\n"
    )
    prometheus = subprocess.Popen(
        [
            _prometheus(),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        agents[0].start("--metrics-port", str(agent_port))
        for agent in agents[1:]:
            agent.start()
        coordinator.wait_for(lambda s: s["model_version"] >= 2, timeout=240)
        committed = _wait_value(prometheus_port, 'fedadamw_rounds_total{outcome="committed"}', 2)
        assert committed == 2
        assert (
            _wait_value(prometheus_port, 'fedadamw_agent_rounds_total{outcome="committed"}', 2) == 2
        )
        assert _wait_value(prometheus_port, 'up{job="fedadamw-coordinator"}', 1) == 1
        rules = json.loads(
            urllib.request.urlopen(
                f"http://127.0.0.1:{prometheus_port}/api/v1/rules", timeout=5
            ).read()
        )
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert "FedAdamWNoRoundCommitted" in loaded
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        for agent in agents:
            agent.stop()
        coordinator.stop()

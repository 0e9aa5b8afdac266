"""The Prometheus configuration and alert rules, and the Grafana dashboard, are valid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _promtool() -> str:
    found = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    assert Path(found).exists(), "promtool is missing: `make` installs it from Debian's prometheus"
    return found


def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = _promtool()
    config = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 10 rules found" in rules.stdout


def test_alerts_cover_what_operators_need() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    assert {
        "FedAdamWCoordinatorDown",
        "FedAdamWNoRoundCommitted",
        "FedAdamWHighDropoutRate",
        "FedAdamWUnmaskFailures",
        "FedAdamWRoundDriverStalled",
        "FedAdamWRoundNotStarting",
        "FedAdamWDependencyFailing",
        "FedAdamWForgedShares",
    } <= names
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "fedadamw-dashboard.json").read_text())
    assert dashboard["uid"] == "fedadamw-coordinator"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["gridPos"]["x"] >= 0
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24

"""What can be checked here of the compose file, the Dockerfiles and the Helm chart.

Docker and Helm do not run on this machine, so these tests check structure: the files parse,
everything they name exists in the repository, their ports and commands agree with each
other and with the Prometheus configuration, and every value a chart template reads is
declared in values.yaml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
CHART = DEPLOY / "helm" / "fedadamw-coordinator"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_has_the_deployment() -> None:
    services = _compose()["services"]
    assert {"postgres", "migrate", "coordinator", "tokens", "prometheus", "grafana"} <= set(
        services
    )
    assert {"agent-1", "agent-2", "agent-3"} <= set(services)
    run = " ".join(services["coordinator"]["command"])
    assert "--db=postgresql+psycopg://" in run
    assert "--metrics-port=9464" in run


def test_compose_names_only_files_that_exist() -> None:
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"


def test_prometheus_scrapes_the_compose_services() -> None:
    services = _compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    for target in targets:
        host, port = target.split(":")
        assert host in services, target
        command = services[host].get("command", [])
        assert any(port in str(part) for part in command), f"{host} does not serve {port}"


def test_dockerfiles_copy_what_exists_and_run_our_commands() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for dockerfile in (DEPLOY / "docker").glob("Dockerfile.*"):
        text = dockerfile.read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: {source}"
        assert "USER fedadamw" in text
        entry = re.search(r'ENTRYPOINT \["([^"]+)"', text)
        assert entry is not None
        assert (
            entry.group(1) in scripts
            or (ROOT / "deploy" / "compose" / Path(entry.group(1)).name).exists()
        )


def _values(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _has(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _as_yaml(template: str) -> str:
    """A template with its Go template syntax replaced, to parse as YAML."""
    lines = []
    for line in template.splitlines():
        stripped = line.strip()
        if re.fullmatch(r"\{\{-?\s*(if|else|end|range|with|define)\b.*\}\}", stripped):
            continue  # a control line
        if re.fullmatch(r"\{\{-?\s*(include|toYaml|\.Values\.config).*\}\}", stripped):
            continue  # a whole block inserted by a helper
        lines.append(re.sub(r"\{\{.*?\}\}", "x", line))
    return "\n".join(lines)


def test_chart_parses_and_declares_every_value_it_reads() -> None:
    chart = _values(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    values = _values(CHART / "values.yaml")
    assert _has(values, "tls.existingSecret")
    assert _has(values, "persistence.size")
    assert _has(values, "metrics.serviceMonitor.enabled")
    assert _has(values, "postgresql.enabled")
    templates = sorted((CHART / "templates").glob("*"))
    assert {t.name for t in templates} >= {
        "deployment.yaml",
        "service.yaml",
        "pvc.yaml",
        "servicemonitor.yaml",
    }
    for template in templates:
        text = template.read_text()
        for reference in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            assert _has(values, reference), f"{template.name} reads .Values.{reference}"
        if template.suffix == ".yaml":
            for document in yaml.safe_load_all(_as_yaml(text)):
                assert document is None or "kind" in document, template.name


@pytest.mark.parametrize("name", ["agent-entrypoint.sh"])
def test_agent_entrypoint_enrolls_once_then_runs(name: str) -> None:
    script = (DEPLOY / "compose" / name).read_text()
    assert script.startswith("#!/bin/sh")
    assert "fedadamw-edge enroll" in script
    assert 'if [ ! -f "$STATE/agent.json" ]' in script
    assert "exec fedadamw-edge run" in script
    assert (DEPLOY / "compose" / name).stat().st_mode & 0o111

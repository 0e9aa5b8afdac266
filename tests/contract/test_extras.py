"""Each role installs its own packages: the install extras of pyproject.toml.

The base ``dependencies`` are what every role imports; ``agent``, ``coordinator``,
``postgres``, ``plots`` and ``demo`` add a role's own. An edge device installs
``fedadamw[agent]`` and gets no database, migration or plotting package, and importing the
agent (and loading its built-in task's data) imports none of them either.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME = PROJECT["name"]
DOCKER = ROOT / "deploy" / "docker"

NOT_ON_A_DEVICE = {"sqlalchemy", "alembic", "matplotlib", "psycopg"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, set[str]]:
    """A requirement's canonical name and the extras it asks for."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", text)
    assert match is not None, text
    extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
    return _canonical(match.group(1)), extras


def _installs(*extras: str) -> set[str]:
    """Every distribution ``pip install 'fedadamw[EXTRAS]'`` asks for directly, with the
    extras that name this project again (``fedadamw[coordinator]``) followed."""
    optional: dict[str, list[str]] = PROJECT["optional-dependencies"]
    names: set[str] = set()
    seen: set[str] = set()
    todo = [None, *extras]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra is not None:
            seen.add(extra)
        for text in PROJECT["dependencies"] if extra is None else optional[extra]:
            name, wanted = _requirement(text)
            if name == _canonical(NAME):
                todo.extend(wanted)
            else:
                names.add(name)
    return names


def test_the_extras_exist() -> None:
    assert {"agent", "coordinator", "postgres", "plots", "demo", "dev"} <= set(
        PROJECT["optional-dependencies"]
    )


def test_base_and_agent_hold_no_database_or_plotting_package() -> None:
    assert {_requirement(r)[0] for r in PROJECT["dependencies"]} & NOT_ON_A_DEVICE == set()
    assert _installs("agent") & NOT_ON_A_DEVICE == set()


def test_coordinator_extra_holds_its_store() -> None:
    assert {"sqlalchemy", "alembic"} <= _installs("coordinator")
    assert "psycopg" in _installs("postgres")


def test_demo_extra_holds_everything_the_demo_starts() -> None:
    assert _installs("coordinator", "agent", "plots") <= _installs("demo")
    assert "matplotlib" in _installs("demo")


def _imports(package: str, *, skip: tuple[str, ...] = ()) -> set[str]:
    """Top-level names of the modules outside the standard library and this project that
    ``package`` imports anywhere (inside functions too)."""
    project = {"fedadamw", "secure_agg", "coordinator", "edge_client", "demo", "wire", "__future__"}
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("wire/v1/") or relative in skip:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names - project - set(sys.stdlib_module_names)


# What each role runs, and the extras that role installs. fedadamw's plotting module draws
# with matplotlib, which the `plots` extra brings; the rest is the agent's too.
ROLES = [
    ("edge_client", ("agent",), ()),
    ("secure_agg", ("agent",), ()),
    ("fedadamw", ("agent",), ("fedadamw/plotting.py",)),
    ("fedadamw", ("agent", "plots"), ()),
    ("coordinator", ("coordinator",), ()),
    ("demo", ("demo",), ()),
    ("wire", ("agent",), ()),
]


@cache
def _distributions() -> dict[str, set[str]]:
    """Each importable top-level module here, and the distributions that install it."""
    return {m: {_canonical(d) for d in ds} for m, ds in packages_distributions().items()}


@pytest.mark.parametrize(("package", "extras", "skip"), ROLES)
def test_every_import_is_installed_by_the_role(
    package: str, extras: tuple[str, ...], skip: tuple[str, ...]
) -> None:
    provided = _distributions()
    declared = _installs(*extras)
    missing = {}
    for module in sorted(_imports(package, skip=skip)):
        if module not in provided:
            missing[module] = "not installed here, so not known which distribution it is"
        elif not provided[module] & declared:
            missing[module] = f"from {sorted(provided[module])}, which [{','.join(extras)}] lacks"
    assert missing == {}


def _pip_install_line(dockerfile: Path) -> str:
    text = dockerfile.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith("RUN pip install")]
    assert len(lines) == 1, dockerfile.name
    return lines[0]


def _installed_extras(dockerfile: Path) -> set[str]:
    match = re.search(r"""["']?\.\[([^\]]*)\]["']?""", _pip_install_line(dockerfile))
    assert match is not None, f"{dockerfile.name} installs no extra"
    return {e.strip() for e in match.group(1).split(",")}


def test_the_edge_image_installs_the_agent_extra_only() -> None:
    dockerfile = DOCKER / "Dockerfile.edge"
    extras = _installed_extras(dockerfile)
    assert "agent" in extras
    assert _installs(*extras) & NOT_ON_A_DEVICE == set()
    assert "COPY coordinator" not in dockerfile.read_text()


def test_the_coordinator_image_installs_its_extras() -> None:
    assert {"coordinator", "postgres"} <= _installed_extras(DOCKER / "Dockerfile.coordinator")


AGENT_RUN = """
import importlib, json, pkgutil, sys
import edge_client
for info in pkgutil.walk_packages(edge_client.__path__, "edge_client."):
    importlib.import_module(info.name)
from fedadamw.tasks import ClientDataSpec, load_task
load_task("digits-cnn").client_data(ClientDataSpec(partition=0, num_partitions=2))
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_the_agent_imports_no_database_plotting_or_coordinator_module() -> None:
    """Every edge_client module, and the built-in task's data as ``fedadamw-edge run``
    loads it, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", AGENT_RUN],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "edge_client" in loaded
    assert loaded & (NOT_ON_A_DEVICE | {"coordinator"}) == set()

"""The import rules of docs/architecture.md, section 1, checked over every module.

Every ``import`` and ``from ... import`` statement of the project's packages (inside functions
too, relative ones resolved) is read with ``ast``; a package may use only what its row of
the layout table allows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"fedadamw", "secure_agg", "coordinator", "edge_client", "demo", "wire"}

FORBIDDEN = {
    # SecAgg+ without transport: no project package, no wire, no database.
    "secure_agg": PROJECT - {"secure_agg"} | {"grpc", "sqlalchemy", "alembic", "prometheus_client"},
    # The algorithm: plain torch, no network or database.
    "fedadamw": PROJECT - {"fedadamw"} | {"grpc", "sqlalchemy", "alembic", "prometheus_client"},
    # The coordinator and the agent meet only on the wire.
    "coordinator": {"edge_client", "demo"},
    "edge_client": {"coordinator", "demo", "sqlalchemy", "alembic"},
    # The demo runs the services as commands, as a user would; it imports none of them.
    "demo": PROJECT - {"demo", "fedadamw"} | {"grpc", "sqlalchemy", "alembic"},
    # What both sides agree on: the standard library and secure_agg (its generated v1/ aside).
    "wire": PROJECT - {"wire", "secure_agg"}
    | {"sqlalchemy", "alembic", "prometheus_client", "torch"},
}


def _modules(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    if package == "wire":
        files = [f for f in files if "v1" not in f.relative_to(ROOT / package).parts]
    return files


def _imported(path: Path, package: str) -> set[str]:
    """Top-level names of every module ``path`` imports."""
    dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return _imports_of(path.read_text(), dotted=dotted, package=package)


def _imports_of(source: str, *, dotted: str, package: str) -> set[str]:
    tree = ast.parse(source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = dotted.split(".")[: -node.level]
                names.add((base or [package])[0])
            elif node.module is not None:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_package_imports_only_what_the_layout_allows(package: str) -> None:
    files = _modules(package)
    assert files, f"no modules found under {package}/"
    broken = {
        str(path.relative_to(ROOT)): sorted(_imported(path, package) & FORBIDDEN[package])
        for path in files
    }
    assert {path: names for path, names in broken.items() if names} == {}


def test_the_checker_sees_imports_anywhere_in_a_module() -> None:
    source = (
        "import numpy as np\n"
        "from . import kdf\n"
        "def late():\n"
        "    from coordinator.store import Store\n"
        "    import grpc.aio\n"
    )
    found = _imports_of(source, dotted="secure_agg.example", package="secure_agg")
    assert found == {"numpy", "secure_agg", "coordinator", "grpc"}
    assert found & FORBIDDEN["secure_agg"] == {"coordinator", "grpc"}

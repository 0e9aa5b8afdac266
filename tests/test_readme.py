"""Every shell block in README.md runs as written, unless it is marked as an example that
needs more than this machine (a comment ``<!-- example: why -->`` right above it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:<!--\s*example:(?P<why>[^>]*)-->\s*\n)?```sh\n(?P<body>.*?)```", re.S)


def _blocks() -> list[tuple[str, str | None]]:
    return [(m["body"], m["why"]) for m in BLOCK.finditer(README.read_text())]


def test_readme_has_runnable_and_marked_blocks() -> None:
    blocks = _blocks()
    assert any(why is None for _, why in blocks)
    assert all(why is None or why.strip() for _, why in blocks)
    assert "make demo" in blocks[0][0]
    assert "make test" in blocks[0][0]


@pytest.mark.parametrize(
    "body", [body for body, why in _blocks() if why is None], ids=lambda body: body.split()[0]
)
def test_readme_block_runs_as_written(body: str, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

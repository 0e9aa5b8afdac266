"""The systemd units in deploy/systemd pass ``systemd-analyze verify``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
@pytest.mark.parametrize("unit", ["fedadamw-edge.service", "fedadamw-coordinator.service"])
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    # The units name the install prefix /opt/fedadamw; verify them against this install.
    text = (UNITS / unit).read_text().replace("/opt/fedadamw/bin", str(Path(sys.executable).parent))
    (tmp_path / unit).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    for hardening in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=fedadamw",
        "Restart=on-failure",
    ):
        assert hardening in text

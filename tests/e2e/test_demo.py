"""``fedadamw demo``: the whole deployment on loopback, started and stopped by one command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _leftovers(marker: Path) -> list[str]:
    """Command lines of live processes that mention ``marker`` (the demo's directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(marker) in cmdline and "pytest" not in cmdline:
            found.append(cmdline)
    return found


def test_the_demo_trains_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [str(BIN / "fedadamw"), "demo", "--clients", "4", "--rounds", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "Prometheus metrics: http://127.0.0.1:" in text
    assert "3 rounds committed, 0 aborted" in text
    rows = [line for line in text.splitlines() if re.match(r"\s+\d+\s+committed", line)]
    assert len(rows) == 3
    summary = re.search(r"final test accuracy (\d\.\d+) \(the initial model: (\d\.\d+)\)", text)
    assert summary is not None, text
    final, initial = float(summary[1]), float(summary[2])
    assert initial < 0.3  # the untrained model is near chance (0.1)
    assert final > initial + 0.3
    assert re.search(rf"\s+init\s+model\s+{initial:.3f}", text), text
    assert "masked_input" in text  # the time split by phase
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert _leftovers(out) == []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    demo = subprocess.Popen(
        [str(BIN / "fedadamw"), "demo", "--clients", "3", "--rounds", "50", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Python turns SIGINT into KeyboardInterrupt only where it was not ignored at start:
        # a test run started in the background of a non-interactive shell ignores it
        preexec_fn=_default_sigint,
    )
    assert demo.stdout is not None
    deadline = time.monotonic() + 300
    for line in demo.stdout:  # wait until rounds run
        if re.match(r"\s+0\s+committed", line) or time.monotonic() > deadline:
            break
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=180)
    assert demo.returncode == 130, rest
    assert "stopping every process" in rest
    assert _leftovers(out) == []

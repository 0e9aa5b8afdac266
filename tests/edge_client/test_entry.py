"""``fedadamw-edge run`` stopped while it is still importing exits 0 (``edge_client.entry``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_the_entry_point_imports_nothing_heavy_before_its_handlers() -> None:
    probe = (
        "import sys, edge_client.entry; "
        "print(sorted(m for m in ('grpc', 'torch', 'cryptography', 'edge_client.cli') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sigterm_as_soon_as_run_starts_exits_zero(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [str(BIN / "fedadamw-edge"), "run", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _catches(process.pid, signal.SIGTERM):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no SIGTERM handler within 30 s"
            time.sleep(0.001)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "SIGTERM received while starting: exiting" in err

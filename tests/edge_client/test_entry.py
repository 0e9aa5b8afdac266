"""``fedadamw-edge run`` stopped while it is still importing exits 0 (``edge_client.entry``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


# A stop that lands inside a class body's ``__set_name__`` (every dataclass field has one, and
# importing the agent defines hundreds): Python 3.11 wraps an exception raised there in
# RuntimeError, so a handler that raised SystemExit exited 1 with a traceback (seen in CI).
_STOP_INSIDE_SET_NAME = """
import os, signal, sys, time
from {module} import {handler} as handler
signal.signal(signal.SIGTERM, handler)

class Field:
    def __set_name__(self, owner, name):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

class Holder:
    shares = Field()

print("the stop was not handled", file=sys.stderr)
sys.exit(3)
"""


@pytest.mark.parametrize(
    ("module", "handler"),
    [("edge_client.entry", "_exit_while_importing"), ("edge_client.cli", "_exit_while_starting")],
)
def test_a_stop_inside_set_name_while_starting_exits_zero(module: str, handler: str) -> None:
    code = _STOP_INSIDE_SET_NAME.format(module=module, handler=handler)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr

"""The ``fedadamw-edge`` command's entry point.

A stop request (SIGTERM, SIGINT) that comes while ``fedadamw-edge run`` is still importing
has nothing to finish, so the command exits 0 at once, as ``edge_client.cli._run`` does
while it loads torch and the data. This module imports nothing heavy, so that holds from
the first moment: importing ``edge_client.cli`` (gRPC, cryptography) takes about 0.5 s on
an idle core and several seconds on a busy one, and a container stopped in that time used
to die of the signal (exit 143) instead. The other commands keep the default handling.

The handler leaves with ``os._exit``, not ``SystemExit``: a signal is handled wherever the
interpreter happens to be, and an exception raised inside a class body's ``__set_name__``
(every dataclass field runs one) comes out as ``RuntimeError`` on Python 3.11, which
turned a clean stop into a traceback and exit 1. Nothing has been written while starting,
so there is nothing for the interpreter's own shutdown to finish.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["exit_now", "main"]

_STOPS = (signal.SIGTERM, signal.SIGINT)


def _exit_while_importing(signum: int, frame: object) -> None:
    print(
        f"fedadamw-edge: {signal.Signals(signum).name} received while starting: exiting",
        file=sys.stderr,
    )
    exit_now()


def exit_now() -> None:
    """End the process with status 0 at once, after flushing what it has printed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe takes nothing more
            stream.flush()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    runs = bool(args) and args[0] == "run"
    if runs:
        for sig in _STOPS:
            signal.signal(sig, _exit_while_importing)
    from edge_client import cli  # its ``_run`` keeps the same handling until the loop starts

    return cli.main(args)

"""The ``fedadamw-edge`` command's entry point.

A stop request (SIGTERM, SIGINT) that comes while ``fedadamw-edge run`` is still importing
has nothing to finish, so the command exits 0 at once, as ``edge_client.cli._run`` does
while it loads torch and the data. This module imports nothing heavy, so that holds from
the first moment: importing ``edge_client.cli`` (gRPC, cryptography) takes about 0.5 s on
an idle core and several seconds on a busy one, and a container stopped in that time used
to die of the signal (exit 143) instead. The other commands keep the default handling.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]

_STOPS = (signal.SIGTERM, signal.SIGINT)


def _exit_while_importing(signum: int, frame: object) -> None:
    print(
        f"fedadamw-edge: {signal.Signals(signum).name} received while starting: exiting",
        file=sys.stderr,
    )
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    runs = bool(args) and args[0] == "run"
    if runs:
        for sig in _STOPS:
            signal.signal(sig, _exit_while_importing)
    from edge_client import cli  # its ``_run`` keeps the same handling until the loop starts

    return cli.main(args)

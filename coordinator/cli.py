"""``fedadamw-coordinator``: the coordinator service and its admin commands.

The service is not part of this release yet. The command exists so that installs keep one
stable name; it explains that and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedadamw-coordinator",
        description=(
            "The FedAdamW coordinator service (run, token, clients, status, export, db). "
            "It is not part of this release yet: run FedAdamW in process with "
            "`fedadamw simulate` meanwhile."
        ),
    )
    parser.parse_args(argv)
    print(
        "fedadamw-coordinator: the coordinator service is not part of this release yet; "
        "use `fedadamw simulate` to run FedAdamW in process.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())

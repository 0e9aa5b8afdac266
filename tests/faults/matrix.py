"""The fault matrix: what each fault test saw, fault × phase → outcome.

Each test under ``tests/faults/`` records one row per case it ran with :func:`record`, after
its invariants held (a case that failed records nothing). Rows go, one JSON object per line,
to ``$FAULTS_MATRIX`` (default ``runs/faults/matrix.jsonl``); lines are appended whole, so
test processes running side by side (pytest-xdist) may share the file. A run starts it
afresh (``tests/faults/conftest.py``).

``python -m tests.faults.matrix [FILE]`` prints the rows as the Markdown table of
``tests/benchmarks/RESULTS.md``, grouped by fault in the order of ``FAULTS``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["FAULTS", "Row", "matrix_path", "read", "record", "table"]

FAULTS = (
    "coordinator SIGKILL",
    "agents SIGKILL",
    "agent SIGSTOP",
    "database stopped",
    "blob store full",
    "blob store read-only",
    "network",
    "second coordinator",
)
"""The kinds of fault, in the order the table lists them."""


@dataclass(frozen=True)
class Row:
    fault: str  # one of FAULTS
    case: str  # what exactly was done
    phase: str
    backend: str  # sqlite, postgresql, or "-" where the database plays no part
    outcome: str
    observed: str  # what the logs, metrics and health said, or a figure


def matrix_path() -> Path:
    return Path(os.environ.get("FAULTS_MATRIX", "runs/faults/matrix.jsonl"))


def record(
    fault: str, case: str, phase: str, outcome: str, observed: str, *, backend: str = "sqlite"
) -> None:
    """Append one row (call it once the case's invariants have held)."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; add it to FAULTS")
    row = Row(fault, case, phase, backend, outcome, observed)
    path = matrix_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(row), ensure_ascii=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write of one line: appends do not interleave
    finally:
        os.close(fd)


def read(path: Path) -> list[Row]:
    return [Row(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table, by fault in ``FAULTS`` order (stable within one)."""
    ordered = sorted(rows, key=lambda r: FAULTS.index(r.fault))
    lines = [
        "| fault | case | phase | database | outcome | observed |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        "| "
        + " | ".join(_cell(c) for c in (r.fault, r.case, r.phase, r.backend, r.outcome, r.observed))
        + " |"
        for r in ordered
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else matrix_path()
    if not path.exists():
        print(f"no fault matrix at {path}: run pytest tests/faults first", file=sys.stderr)
        return 1
    rows = read(path)
    print(table(rows))
    print(f"\n{len(rows)} cases, {len({r.fault for r in rows})} kinds of fault", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

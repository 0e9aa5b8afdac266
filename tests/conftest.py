"""Test-wide settings.

The tests train tiny models, where torch's intra-op threads only contend with each other
(and with the other processes a test starts), so every test process, and every process a
test starts, uses one thread. ``OMP_NUM_THREADS`` is read when torch is first imported, so
setting it here is enough; tests that do not need torch do not import it.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- the order files are handed to the pytest-xdist workers ---------------------------------
#
# ``make test`` hands out whole files (``--dist loadfile --no-loadscope-reorder``), each to
# the next idle worker, in collection order. Files of many quick unit tests are cheap; a
# few files of real processes take minutes each. Started last, one of those ran alone on
# one worker while the others idled: the suite took minutes longer than its work. So the
# longest files go first (longest-first scheduling), and the rest fill in behind them.
# The list is measured (``--durations=0``, the seconds summed per file); a file missing
# from it only runs later, in the order of the directories below.
LONGEST_FIRST = (
    "tests/e2e/test_agents.py",
    "tests/e2e/test_lying_coordinator.py",
    "tests/faults/test_crash.py",
    "tests/faults/test_store_outage.py",
    "tests/faults/test_network.py",
    "tests/faults/test_read_only.py",
    "tests/e2e/test_agent_errors.py",
    "tests/faults/test_agents_killed.py",
    "tests/faults/test_leader.py",
    "tests/e2e/test_admin_database.py",
)
PROCESS_HEAVY_FIRST = ("tests/faults/", "tests/e2e/", "tests/deploy/", "tests/")


def _schedule_key(path: str) -> tuple[int, int]:
    if path in LONGEST_FIRST:
        return (0, LONGEST_FIRST.index(path))
    return (1, next(i for i, d in enumerate(PROCESS_HEAVY_FIRST) if path.startswith(d)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # stable: the tests of one file keep their order
    items.sort(key=lambda item: _schedule_key(item.nodeid.split("::", 1)[0]))

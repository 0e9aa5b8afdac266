"""The fault tests' run starts the fault matrix afresh (``tests/faults/matrix.py``)."""

from __future__ import annotations

import pytest

from tests.faults.matrix import matrix_path


def pytest_configure(config: pytest.Config) -> None:
    # once per run: in pytest-xdist's controller, not again in each worker
    if not hasattr(config, "workerinput"):
        matrix_path().unlink(missing_ok=True)

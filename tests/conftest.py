"""Test-wide settings.

The tests train tiny models, where torch's intra-op threads only contend with each other
(and with the other processes a test starts), so every test process, and every process a
test starts, uses one thread. ``OMP_NUM_THREADS`` is read when torch is first imported, so
setting it here is enough; tests that do not need torch do not import it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

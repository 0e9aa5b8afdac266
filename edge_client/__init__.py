"""The FedAdamW edge agent.

It will hold enrollment, the long-running training loop and the secure-aggregation client.
Until those land, the package holds only the ``fedadamw-edge`` entry point, which says so.
"""

from __future__ import annotations

__all__: list[str] = []

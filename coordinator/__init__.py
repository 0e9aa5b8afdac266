"""The FedAdamW coordinator service.

It will hold the gRPC service, the round state machine, the store and the admin CLI. Until
those land, the package holds only the ``fedadamw-coordinator`` entry point, which says so.
"""

from __future__ import annotations

__all__: list[str] = []

"""FedAdamW: federated AdamW with a global-update correction and averaged second moments."""

from __future__ import annotations

__all__: list[str] = []

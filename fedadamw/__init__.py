"""FedAdamW: federated AdamW with a global-update correction and averaged second moments.

The algorithm (docs/architecture.md, section 2), pure torch with no network or database: the client
optimizer, the server rule, the second-moment block partition, the flat tensor codec, the
baselines, the tasks and the in-process simulator.

The names below load on first use, so that importing one module of the package does not
load them all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedadamw.algorithms import ALGORITHMS, Algorithm, get_algorithm
    from fedadamw.blocks import BlockMode, BlockPartition
    from fedadamw.client import ClientUpdate, LocalTrainer, RoundPlan
    from fedadamw.errors import FedAdamWError
    from fedadamw.layout import FlatLayout
    from fedadamw.optimizer import FedAdamW
    from fedadamw.server import Hyperparameters, ServerState, cosine_lr, server_update

_WHERE = {
    "ALGORITHMS": "fedadamw.algorithms",
    "Algorithm": "fedadamw.algorithms",
    "get_algorithm": "fedadamw.algorithms",
    "BlockMode": "fedadamw.blocks",
    "BlockPartition": "fedadamw.blocks",
    "ClientUpdate": "fedadamw.client",
    "LocalTrainer": "fedadamw.client",
    "RoundPlan": "fedadamw.client",
    "FedAdamWError": "fedadamw.errors",
    "FlatLayout": "fedadamw.layout",
    "FedAdamW": "fedadamw.optimizer",
    "Hyperparameters": "fedadamw.server",
    "ServerState": "fedadamw.server",
    "cosine_lr": "fedadamw.server",
    "server_update": "fedadamw.server",
}

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "BlockMode",
    "BlockPartition",
    "ClientUpdate",
    "FedAdamW",
    "FedAdamWError",
    "FlatLayout",
    "Hyperparameters",
    "LocalTrainer",
    "RoundPlan",
    "ServerState",
    "cosine_lr",
    "get_algorithm",
    "server_update",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedadamw' has no attribute {name!r}")

"""FedAdamW: federated AdamW with a global-update correction and averaged second moments.

The algorithm (DESIGN.md section 2), pure torch with no network or database: the client
optimizer, the server rule, the second-moment block partition, the flat tensor codec, the
baselines, the tasks and the in-process simulator.
"""

from __future__ import annotations

from fedadamw.algorithms import ALGORITHMS, Algorithm, get_algorithm
from fedadamw.blocks import BlockMode, BlockPartition
from fedadamw.client import ClientUpdate, LocalTrainer, RoundPlan
from fedadamw.errors import FedAdamWError
from fedadamw.layout import FlatLayout
from fedadamw.optimizer import FedAdamW
from fedadamw.server import Hyperparameters, ServerState, cosine_lr, server_update

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

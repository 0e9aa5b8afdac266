"""FedAdamW and its baselines, as one description each.

Every algorithm runs through the same client loop (``fedadamw.client.LocalTrainer``) and the
same server rule (``fedadamw.server.server_update``); they differ only in these fields:

| name               | local optimizer | α (correction) | v̄ and t carried | v̄ blocks |
|--------------------|-----------------|----------------|------------------|-----------|
| fedadamw           | FedAdamW        | 0.5            | yes              | default (full) |
| fedadamw-tensor    | FedAdamW        | 0.5            | yes              | tensor    |
| fedadamw-head      | FedAdamW        | 0.5            | yes              | head      |
| fedadamw-full      | FedAdamW        | 0.5            | yes              | full      |
| fedadamw-alpha0    | FedAdamW        | 0              | yes              | default   |
| fedadamw-vreset    | FedAdamW        | 0.5            | no (v, t = 0)    | —         |
| fedavg-adamw       | AdamW           | 0              | no               | —         |
| fedavg             | SGD             | —              | no               | —         |

"α = 0.5" stands for the configured α (``Hyperparameters.alpha``). ``fedavg-adamw`` is
FedAdamW with α = 0 and no carried state, which is plain AdamW restarted every round.
``fedadamw-vreset`` resets t with v: bias correction must match the history v holds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fedadamw.blocks import BlockMode
from fedadamw.errors import UnknownNameError

__all__ = ["ALGORITHMS", "DEFAULT_BLOCK_MODE", "Algorithm", "LocalOptimizer", "get_algorithm"]

# Chosen from the convergence benchmark (tests/benchmarks/RESULTS.md): the whole v averaged
# was the best or tied-best v̄ mode on both tasks and both splits, and the steadiest across
# seeds; one mean per tensor lost most on the ViT (0.84 against 0.89 at Dirichlet 0.1).
DEFAULT_BLOCK_MODE = BlockMode.FULL


class LocalOptimizer(enum.StrEnum):
    FEDADAMW = "fedadamw"
    SGD = "sgd"


@dataclass(frozen=True)
class Algorithm:
    """One federated algorithm: what the clients run and what they carry between rounds.

    ``block_mode`` is None when v̄ is not carried; ``default_lr`` is the base learning rate
    the simulator uses when none is given: the best of the convergence benchmark's grid on
    digits-cnn at Dirichlet 0.5 (the demo's setting).
    """

    name: str
    local_optimizer: LocalOptimizer
    use_correction: bool
    block_mode: BlockMode | None
    default_lr: float
    summary: str

    @property
    def carries_second_moment(self) -> bool:
        return self.block_mode is not None


def _fedadamw(name: str, mode: BlockMode, summary: str) -> Algorithm:
    return Algorithm(name, LocalOptimizer.FEDADAMW, True, mode, 3e-3, summary)


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        _fedadamw("fedadamw", DEFAULT_BLOCK_MODE, "FedAdamW with the default v̄ blocks"),
        _fedadamw("fedadamw-tensor", BlockMode.TENSOR, "FedAdamW, one v̄ mean per tensor"),
        _fedadamw("fedadamw-head", BlockMode.HEAD, "FedAdamW, one v̄ mean per attention head"),
        _fedadamw("fedadamw-full", BlockMode.FULL, "FedAdamW, the whole v averaged"),
        Algorithm(
            "fedadamw-alpha0",
            LocalOptimizer.FEDADAMW,
            False,
            DEFAULT_BLOCK_MODE,
            1e-2,
            "FedAdamW without the correction (α = 0)",
        ),
        Algorithm(
            "fedadamw-vreset",
            LocalOptimizer.FEDADAMW,
            True,
            None,
            1e-2,
            "FedAdamW without v̄: v and t restart every round",
        ),
        Algorithm(
            "fedavg-adamw",
            LocalOptimizer.FEDADAMW,
            False,
            None,
            1e-2,
            "FedAvg with local AdamW, state reset every round",
        ),
        Algorithm("fedavg", LocalOptimizer.SGD, False, None, 0.3, "FedAvg with local SGD"),
    )
}


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError as exc:
        raise UnknownNameError(
            f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}"
        ) from exc

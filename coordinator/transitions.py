"""The transition rule of a round's phases (from ``domain.PHASE_ORDER``), used by every store.

A round moves forward one phase at a time and ends either committed (after unmasking) or
aborted (from any open phase). Nothing leaves a finished round.
"""

from __future__ import annotations

from coordinator.domain import NEXT_PHASE, OPEN_PHASES, RoundPhase

__all__ = ["NEXT_PHASE", "is_valid_transition"]


def is_valid_transition(current: RoundPhase, new: RoundPhase) -> bool:
    """Whether a round in ``current`` may move to ``new``."""
    if current not in OPEN_PHASES:
        return False
    return new is RoundPhase.ABORTED or NEXT_PHASE[current] is new

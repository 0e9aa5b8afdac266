"""The one transition table of a round's phases, used by every store backend.

A round moves forward one phase at a time and ends either committed (after unmasking) or
aborted (from any open phase). Nothing leaves a finished round.
"""

from __future__ import annotations

from coordinator.domain import OPEN_PHASES, RoundPhase

__all__ = ["NEXT_PHASE", "is_valid_transition"]

NEXT_PHASE: dict[RoundPhase, RoundPhase] = {
    RoundPhase.ADVERTISE_KEYS: RoundPhase.SHARE_KEYS,
    RoundPhase.SHARE_KEYS: RoundPhase.MASKED_INPUT,
    RoundPhase.MASKED_INPUT: RoundPhase.CONSISTENCY_CHECK,
    RoundPhase.CONSISTENCY_CHECK: RoundPhase.UNMASKING,
    RoundPhase.UNMASKING: RoundPhase.COMMITTED,
}


def is_valid_transition(current: RoundPhase, new: RoundPhase) -> bool:
    """Whether a round in ``current`` may move to ``new``."""
    if current not in OPEN_PHASES:
        return False
    return new is RoundPhase.ABORTED or NEXT_PHASE[current] is new

"""How one round ended for this agent: the outcome, and the error that ends a round early."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Outcome", "RoundResult", "SessionError"]


class Outcome(enum.StrEnum):
    COMMITTED = "committed"
    ABORTED = "aborted"  # the round ended without a model
    DROPPED = "dropped"  # the coordinator went on without this agent
    REFUSED = "refused"  # this agent gave up on the round (its own limits, or a lying server)


@dataclass(frozen=True)
class RoundResult:
    round_id: str
    outcome: Outcome
    model_version: int | None = None
    reason: str = ""


class SessionError(Exception):
    """The round cannot go on for this agent; ``outcome`` and ``reason`` say why."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason

    @classmethod
    def aborted(cls, reason: str) -> SessionError:
        """The round cannot be finished here (a bad download, say); the agent goes on."""
        return cls(Outcome.ABORTED, reason)

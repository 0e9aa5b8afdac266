"""Closed vocabularies: why a round aborted, and why a participant was dropped.

Each value is also its metric label (``reason`` of ``fedadamw_round_aborts_total`` and of
``fedadamw_dropouts_total``), one to one, so a dashboard never sees a label the code does not
name. The store keeps them as text; ``Dropped.parse`` and ``RoundAbortReason`` read it back.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from secure_agg import AbortReason, DropReason

__all__ = ["Dropped", "RoundAbortReason", "stored_drops"]


class RoundAbortReason(enum.StrEnum):
    """Why the coordinator ended a round without a sum (docs/architecture.md, section 3).

    The first five are the secure-aggregation server's own reasons
    (``secure_agg.AbortReason``); the rest are the coordinator's.
    """

    TOO_FEW_CLIENTS = AbortReason.TOO_FEW_CLIENTS.value
    """Fewer than t + 1, or fewer than ``min_clients``, participants are left."""
    TOO_FEW_SHARES = AbortReason.TOO_FEW_SHARES.value
    """Some mask has fewer than t revealed shares."""
    INCONSISTENT_SHARES = AbortReason.INCONSISTENT_SHARES.value
    """Revealed shares disagree or rebuild a secret that does not match its commitment."""
    INCOMPLETE_MASKED_INPUT = AbortReason.INCOMPLETE_MASKED_INPUT.value
    """A participant's upload was only partly summed."""
    CANCELLED = AbortReason.CANCELLED.value
    """The aggregation was cancelled."""
    RESUME_FAILED = "resume_failed"
    """After a restart the stored round no longer replays as it ran (damaged state)."""
    INPUT_UNREADABLE = "input_unreadable"
    """A durable masked input could not be read back from the spool into the sum."""

    @classmethod
    def from_secagg(cls, reason: AbortReason) -> RoundAbortReason:
        """The coordinator's reason for a secure-aggregation server abort."""
        return cls(reason.value)


@dataclass(frozen=True)
class Dropped:
    """Why a participant stopped counting as alive: a ``DropReason`` and, when the client
    left on its own, the reason it gave."""

    reason: DropReason
    client_reason: AbortReason | None = None

    @property
    def label(self) -> str:
        """The metric label (the client's own reason is too varied for a label)."""
        return self.reason.value

    @property
    def stored(self) -> str:
        """The text the store keeps, e.g. ``client_aborted:unsafe_threshold``."""
        if self.client_reason is None:
            return self.reason.value
        return f"{self.reason.value}:{self.client_reason.value}"

    @classmethod
    def client_left(cls, reason: str) -> Dropped:
        """A client's AbortRound; a reason this version does not know counts as cancelled."""
        try:
            client_reason = AbortReason(reason)
        except ValueError:
            client_reason = AbortReason.CANCELLED
        return cls(DropReason.CLIENT_ABORTED, client_reason)

    @classmethod
    def parse(cls, text: str) -> Dropped:
        """Read back ``stored``. Raises ``ValueError`` on text no version wrote."""
        reason, sep, detail = text.partition(":")
        drop = DropReason(reason)
        if not sep:
            return cls(drop)
        if drop is not DropReason.CLIENT_ABORTED:
            raise ValueError(f"drop reason {text!r}: only client_aborted carries a detail")
        return cls.client_left(detail)


def stored_drops(dropped: Mapping[int, Dropped]) -> dict[int, str]:
    """Secagg id → stored drop text, as the store's phase transitions take it."""
    return {secagg: drop.stored for secagg, drop in dropped.items()}

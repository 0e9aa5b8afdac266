"""Who holds a leader lock, as a waiting coordinator names it, and the times it gives.

:class:`Holder` describes the holder of one of the two locks of
:class:`~coordinator.leader.LeaderLock` (the data directory's lock file,
:mod:`coordinator.leader_file`; the PostgreSQL advisory lock,
:mod:`coordinator.leader_postgres`): pid, host, since when, and a detail; ``str()`` is the
text a standby logs. :func:`now_utc` and :func:`iso_utc` are the whole-second UTC times the
lock file records and the log lines show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Holder", "iso_utc", "now_utc"]


def now_utc() -> datetime:
    """Now, in UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


def iso_utc(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as far as can be told; ``str()`` is for log lines."""

    lock: str
    pid: int | None = None
    host: str | None = None
    since: datetime | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.pid is None and self.since is None:
            return f"{self.lock}: {self.detail or 'held by a process that cannot be identified'}"
        parts = []
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.host:
            parts.append(f"on host {self.host}")
        if self.since is not None:
            parts.append(f"since {iso_utc(self.since)}")
        who = " ".join(parts) or "another process"
        return f"{self.lock} is held by {who}" + (f" ({self.detail})" if self.detail else "")

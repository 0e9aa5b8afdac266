"""The data directory's leader lock: ``fcntl.flock(LOCK_EX)`` on ``DIR/leader.lock``.

:class:`FileLock` takes the lock without blocking, writes the holder into the file as JSON
(``{"pid", "host", "since", "role"}``) so that a waiting process can name it
(:meth:`FileLock.holder`), tells when the file it locked was removed or replaced
(:meth:`FileLock.problem`), and releases the lock by closing its only descriptor. The file
itself is never removed. How :class:`~coordinator.leader.LeaderLock` uses it:
:mod:`coordinator.leader`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from coordinator.leader_holder import Holder, iso_utc

__all__ = ["LOCK_FILE", "FileLock"]

LOCK_FILE = "leader.lock"
"""The data directory's lock file."""


class FileLock:
    """``flock`` on ``DIR/leader.lock``. Not thread-safe: ``LeaderLock`` serialises it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        return True

    def write_holder(self, role: str, since: datetime) -> None:
        assert self._fd is not None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": iso_utc(since),
            "role": role,
        }
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def holder(self) -> Holder:
        where = f"the data directory {self.path.parent} ({LOCK_FILE})"
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict):
            info = {}
        pid, host, since = info.get("pid"), info.get("host"), info.get("since")
        moment = None
        if isinstance(since, str):
            with contextlib.suppress(ValueError):
                moment = datetime.fromisoformat(since)
        role = info.get("role")
        return Holder(
            lock=where,
            pid=pid if isinstance(pid, int) else None,
            host=host if isinstance(host, str) else None,
            since=moment,
            detail="itself waiting for the database lock" if role == "standby" else "",
        )

    def problem(self) -> str | None:
        """Why the lock no longer guards ``path`` (None while it does)."""
        try:
            stat = os.stat(self.path)
        except OSError as error:
            return f"the lock file {self.path} is gone ({error.strerror})"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return f"the lock file {self.path} was replaced by another file"
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd, self._identity = self._fd, None, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the only descriptor drops the flock

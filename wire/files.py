"""The durable replace of a file: a crash at any moment leaves the whole old file or the whole
new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "write_atomically"]


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o600, temp_prefix: str | None = None
) -> None:
    """Replace ``path`` with ``data`` durably.

    The temp file (``temp_prefix``, by default ``.NAME.``) is made 0600 with O_EXCL beside
    ``path``, so the rename is atomic; it is set to ``mode``, written and fsynced, then
    renamed over ``path``, and the directory is fsynced.
    """
    prefix = f".{path.name}." if temp_prefix is None else temp_prefix
    fd, temp_name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        try:
            if mode != 0o600:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_dir(path.parent)

"""The blob store and the masked-input spool, on the local filesystem.

:class:`BlobStore` holds model tensors and aggregates, addressed by the sha256 of their
bytes (64 lowercase hex characters), fanned out by the first two characters::

    <root>/ab/abcdef…(64 hex)        a blob, immutable once visible
    <root>/ab/.tmp-<random>          a write in progress (never a valid blob name)

A blob becomes visible only by ``rename`` of a complete, fsynced temp file, and the
directory is fsynced after the rename, so a crash at any moment leaves either the whole
blob or no blob (at worst a stray temp file, which :meth:`BlobStore.sweep_temporary`
removes). Which blobs may be deleted is the database's to say: ``coordinator.retention``
lists them with :meth:`BlobStore.names` and deletes the unreferenced ones. Arrays are
stored as their raw little-endian bytes, with no header: the dtype and length live in the
database next to the hash.

:class:`InputSpool` stages each participant's masked input for one round, one file per
``(round_id, secagg_id)``::

    <root>/<round_id>/<secagg_id>.input

Chunks arrive out of order and may be resent; each is written at its byte offset with
``pwrite`` and fsynced before :meth:`InputSpool.write_chunk` returns. The coordinator
acknowledges a chunk to the agent only after that, so an acknowledged chunk survives
``kill -9`` (docs/architecture.md, section 5); once all of a participant's chunks are
durable the coordinator adds its input into the round's running sum, and after a restart it
can re-add every complete input from the spool.

Every directory this module creates is 0700 and every file 0600. Names are validated
before they touch a path, so nothing can escape the root. Errors are
:class:`~coordinator.errors.CoordinatorError`:

* ``INVALID_ARGUMENT``: a malformed sha256, round id, secagg id, offset or size;
* ``NOT_FOUND``: no such blob, or spool bytes that were never written;
* ``STORAGE_UNAVAILABLE``: an operating-system failure (disk full, read-only, permissions,
  I/O), which may clear; callers see ``UNAVAILABLE`` and retry;
* ``INTERNAL``: a blob whose bytes no longer hash to its name.

All methods block on disk I/O; async callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from coordinator.errors import BlobError, CoordinatorError, ErrorCode
from wire.files import fsync_dir, write_atomically

__all__ = ["DEFAULT_CHUNK_SIZE", "BlobStore", "InputSpool", "fsync_dir", "write_atomically"]

DEFAULT_CHUNK_SIZE = 1 << 20  # bytes

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ROUND_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TEMP_PREFIX = ".tmp-"
_SPOOL_SUFFIX = ".input"
_SPOOL_NAME_RE = re.compile(r"([1-9][0-9]*)\.input")
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_HASH_READ_SIZE = 1 << 20


def _make_dir(path: Path) -> bool:
    """Create ``path`` (0700) if missing; True when this call created it."""
    try:
        path.mkdir(mode=_DIR_MODE, parents=True)
    except FileExistsError:
        return False
    return True


def _os_error(what: str, exc: OSError) -> BlobError:
    return BlobError(ErrorCode.STORAGE_UNAVAILABLE, f"{what} failed: {exc}")


def _make_root(root: Path) -> None:
    try:
        _make_dir(root)
    except OSError as exc:
        raise _os_error(f"creating {root}", exc) from exc


class BlobStore:
    """Content-addressed blobs under ``root`` (created 0700 if missing)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        _make_root(self._root)

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, sha: str) -> Path:
        if not isinstance(sha, str) or _SHA256_RE.fullmatch(sha) is None:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"invalid blob name {sha!r}: expected 64 lowercase hex characters (sha256)",
            )
        return self._root / sha[:2] / sha

    def _existing(self, sha: str) -> tuple[Path, int]:
        """The blob's path and size; ``NOT_FOUND`` when it is not stored."""
        path = self._path(sha)
        try:
            return path, path.stat().st_size
        except FileNotFoundError as exc:
            raise CoordinatorError(ErrorCode.NOT_FOUND, f"no blob {sha}") from exc
        except OSError as exc:
            raise _os_error(f"reading blob {sha}", exc) from exc

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its sha256 hex.

        Idempotent: storing bytes that are already present rewrites nothing (a present file
        of the wrong size, which only tampering could produce, is replaced).
        """
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == len(data):
                return sha
        try:
            self._write_atomically(path, data)
        except OSError as exc:
            raise _os_error(f"writing blob {sha}", exc) from exc
        return sha

    def _write_atomically(self, path: Path, data: bytes) -> None:
        if _make_dir(path.parent):
            fsync_dir(self._root)
        write_atomically(path, data, temp_prefix=_TEMP_PREFIX)

    def put_array(self, array: npt.NDArray[np.generic]) -> str:
        """Store a 1-D numeric array as its raw little-endian bytes; return the sha256 hex.

        The bytes carry no dtype or shape: record both next to the hash and read the array
        back with :meth:`read_array`. Raises ``INVALID_ARGUMENT`` for an array that is not
        1-D or holds Python objects.
        """
        if array.ndim != 1:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"put_array takes a 1-D array, got shape {array.shape}; flatten it first",
            )
        if array.dtype.hasobject:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT, "put_array cannot store an array of Python objects"
            )
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        return self.put(little.tobytes())

    def exists(self, sha: str) -> bool:
        """Whether a blob named ``sha`` is stored (``INVALID_ARGUMENT`` on a bad name)."""
        return self._path(sha).is_file()

    def size(self, sha: str) -> int:
        """The blob's length in bytes."""
        return self._existing(sha)[1]

    def read(self, sha: str) -> bytes:
        """The blob's bytes (not re-hashed: see :meth:`verify`)."""
        path = self._path(sha)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise CoordinatorError(ErrorCode.NOT_FOUND, f"no blob {sha}") from exc
        except OSError as exc:
            raise _os_error(f"reading blob {sha}", exc) from exc

    def read_array(self, sha: str, dtype: npt.DTypeLike) -> npt.NDArray[np.generic]:
        """A blob written by :meth:`put_array`, as a new writable 1-D array of ``dtype``.

        The result is in native byte order. Raises ``INVALID_ARGUMENT`` when the blob's
        length is not a multiple of the dtype's item size.
        """
        wanted = np.dtype(dtype)
        data = self.read(sha)
        if wanted.itemsize == 0 or len(data) % wanted.itemsize:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"blob {sha} has {len(data)} bytes, not a whole number of {wanted} items",
            )
        stored = np.frombuffer(bytearray(data), dtype=wanted.newbyteorder("<"))
        return stored.astype(wanted.newbyteorder("="), copy=False)

    def iter_chunks(
        self, sha: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE, start_chunk: int = 0
    ) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(index, total_chunks, data)`` from chunk ``start_chunk`` to the end.

        Every chunk is ``chunk_size`` bytes except possibly the last; an empty blob is one
        empty chunk, so a reader always learns ``total_chunks``. Name, existence and range
        are checked when this is called, not on the first ``next``. Raises
        ``INVALID_ARGUMENT`` for ``chunk_size < 1`` or ``start_chunk`` outside
        ``[0, total_chunks)``.
        """
        if chunk_size < 1:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT, f"chunk_size must be positive, got {chunk_size}"
            )
        total_size = self.size(sha)
        total_chunks = max(1, -(-total_size // chunk_size))
        if not 0 <= start_chunk < total_chunks:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"start_chunk {start_chunk} is outside the blob's {total_chunks} chunks",
            )
        return self._chunks(sha, chunk_size, start_chunk, total_chunks)

    def _chunks(
        self, sha: str, chunk_size: int, start_chunk: int, total_chunks: int
    ) -> Iterator[tuple[int, int, bytes]]:
        try:
            with self._path(sha).open("rb") as file:
                file.seek(start_chunk * chunk_size)
                for index in range(start_chunk, total_chunks):
                    yield index, total_chunks, file.read(chunk_size)
        except FileNotFoundError as exc:
            raise CoordinatorError(ErrorCode.NOT_FOUND, f"blob {sha} was deleted") from exc

    def verify(self, sha: str) -> None:
        """Re-hash the blob on disk; raise ``INTERNAL`` if it no longer matches its name."""
        path, _ = self._existing(sha)
        digest = hashlib.sha256()
        try:
            with path.open("rb") as file:
                while block := file.read(_HASH_READ_SIZE):
                    digest.update(block)
        except OSError as exc:
            raise _os_error(f"reading blob {sha}", exc) from exc
        if digest.hexdigest() != sha:
            raise CoordinatorError(
                ErrorCode.INTERNAL,
                f"blob {sha} is corrupt: its bytes hash to {digest.hexdigest()}; "
                f"restore {path} from a backup or delete it",
            )

    def delete(self, sha: str, *, missing_ok: bool = False) -> None:
        """Remove a blob (``NOT_FOUND`` if absent, unless ``missing_ok``)."""
        path = self._path(sha)
        try:
            path.unlink()
        except FileNotFoundError as exc:
            if missing_ok:
                return
            raise CoordinatorError(ErrorCode.NOT_FOUND, f"no blob {sha}") from exc
        except OSError as exc:
            raise _os_error(f"deleting blob {sha}", exc) from exc
        fsync_dir(path.parent)

    def names(self) -> list[str]:
        """The sha256 of every stored blob, sorted (writes in progress are not blobs)."""
        try:
            return sorted(
                entry.name
                for entry in self._root.glob("??/*")
                if _SHA256_RE.fullmatch(entry.name) and entry.parent.name == entry.name[:2]
            )
        except OSError as exc:
            raise _os_error(f"listing {self._root}", exc) from exc

    def usage(self) -> tuple[int, int]:
        """How many blobs are stored and their bytes in all."""
        count = total = 0
        for sha in self.names():
            try:
                total += self.size(sha)
            except CoordinatorError as exc:
                if exc.code is not ErrorCode.NOT_FOUND:
                    raise
                continue  # deleted since it was listed
            count += 1
        return count, total

    def sweep_temporary(self) -> int:
        """Remove temp files left by writes a crash interrupted; return how many.

        Call it at start-up, before any :meth:`put` runs.
        """
        removed = 0
        for temp in self._root.glob(f"??/{_TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                removed += 1
        return removed


class InputSpool:
    """Durable per-round staging of masked inputs under ``root`` (created 0700)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        _make_root(self._root)

    @property
    def root(self) -> Path:
        return self._root

    def _round_dir(self, round_id: str) -> Path:
        if not isinstance(round_id, str) or _ROUND_ID_RE.fullmatch(round_id) is None:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"invalid round id {round_id!r}: expected 1 to 64 of A-Z a-z 0-9 _ -",
            )
        return self._root / round_id

    def _path(self, round_id: str, secagg_id: int) -> Path:
        directory = self._round_dir(round_id)
        if isinstance(secagg_id, bool) or not isinstance(secagg_id, int) or secagg_id < 1:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"invalid secagg id {secagg_id!r}: expected a positive integer",
            )
        return directory / f"{secagg_id}{_SPOOL_SUFFIX}"

    def write_chunk(self, round_id: str, secagg_id: int, *, offset_bytes: int, data: bytes) -> None:
        """Write ``data`` at ``offset_bytes`` of the participant's input and fsync it.

        When this returns the bytes are durable, and only then may the chunk be
        acknowledged. Writing the same chunk again is harmless (same bytes, same place).
        Sizes and offsets against the round's vector length are the caller's to check.
        """
        if offset_bytes < 0:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT, f"offset_bytes must be >= 0, got {offset_bytes}"
            )
        path = self._path(round_id, secagg_id)
        try:
            if _make_dir(path.parent):
                fsync_dir(self._root)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
                created = True
            except FileExistsError:
                fd = os.open(path, os.O_WRONLY)
                created = False
            try:
                view = memoryview(data)
                position = offset_bytes
                while view:
                    written = os.pwrite(fd, view, position)
                    view = view[written:]
                    position += written
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(path.parent)
        except OSError as exc:
            raise _os_error(f"spooling round {round_id} input {secagg_id}", exc) from exc

    def size(self, round_id: str, secagg_id: int) -> int:
        """Bytes spooled so far (up to the furthest byte written), ``NOT_FOUND`` if none."""
        path = self._path(round_id, secagg_id)
        try:
            return path.stat().st_size
        except FileNotFoundError as exc:
            raise CoordinatorError(
                ErrorCode.NOT_FOUND, f"no spooled input {secagg_id} in round {round_id}"
            ) from exc

    def read_range(self, round_id: str, secagg_id: int, *, offset_bytes: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset_bytes``.

        Raises ``NOT_FOUND`` when the participant has no spool file or the range runs past
        the furthest byte written (bytes in a gap never written read as zeros: track which
        chunks arrived before reading).
        """
        if offset_bytes < 0 or length < 0:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT,
                f"offset_bytes and length must be >= 0, got {offset_bytes} and {length}",
            )
        path = self._path(round_id, secagg_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise CoordinatorError(
                ErrorCode.NOT_FOUND, f"no spooled input {secagg_id} in round {round_id}"
            ) from exc
        try:
            parts: list[bytes] = []
            remaining = length
            position = offset_bytes
            while remaining:
                part = os.pread(fd, remaining, position)
                if not part:
                    raise CoordinatorError(
                        ErrorCode.NOT_FOUND,
                        f"spooled input {secagg_id} in round {round_id} ends at byte "
                        f"{position}, before {offset_bytes + length}",
                    )
                parts.append(part)
                remaining -= len(part)
                position += len(part)
            return b"".join(parts)
        finally:
            os.close(fd)

    def iter_chunks(
        self, round_id: str, secagg_id: int, *, chunk_bytes: int
    ) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset_bytes, data)`` over the whole file, ``chunk_bytes`` at a time.

        The last chunk may be shorter. Arguments and existence are checked when this is
        called, not on the first ``next``.
        """
        if chunk_bytes < 1:
            raise CoordinatorError(
                ErrorCode.INVALID_ARGUMENT, f"chunk_bytes must be positive, got {chunk_bytes}"
            )
        path = self._path(round_id, secagg_id)
        self.size(round_id, secagg_id)
        return self._chunks(path, chunk_bytes)

    @staticmethod
    def _chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
        with path.open("rb") as file:
            offset = 0
            while data := file.read(chunk_bytes):
                yield offset, data
                offset += len(data)

    def secagg_ids(self, round_id: str) -> list[int]:
        """The participants with a spool file in the round, ascending (empty if none)."""
        directory = self._round_dir(round_id)
        if not directory.is_dir():
            return []
        ids = []
        for entry in directory.iterdir():
            match = _SPOOL_NAME_RE.fullmatch(entry.name)
            if match is not None:
                ids.append(int(match[1]))
        return sorted(ids)

    def remove_round(self, round_id: str) -> None:
        """Delete everything spooled for the round; a round with nothing spooled is a no-op."""
        directory = self._round_dir(round_id)
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(f"removing the spool of round {round_id}", exc) from exc
        fsync_dir(self._root)

    def rounds(self) -> list[str]:
        """The round ids with a spool directory, sorted (to clean up after a restart)."""
        return sorted(
            entry.name
            for entry in self._root.iterdir()
            if entry.is_dir() and _ROUND_ID_RE.fullmatch(entry.name)
        )

"""The retention policy: which model versions keep their blobs (docs/architecture.md, section 5).

The coordinator keeps the blobs (x, ΔG, v̄) of the newest ``[retention] keep_versions``
model versions, of every pinned version (exported, or ``fedadamw-coordinator version pin``)
and of the version an open round trains from. A pass, :func:`apply_retention`:

1. ``Store.retire_versions`` releases, in one transaction, every other version: its row
   stays, as history, with ``blobs_deleted_at`` set;
2. ``Store.forget_rounds`` deletes the ended rounds older than the newest
   ``[retention] keep_rounds`` (the history ``status`` shows), with the released versions
   they made;
3. only then the blob store deletes every blob that no retained version names: the ones
   just released, and any that a crash left behind (a pass cut short between 1 and 2, or a
   commit cut short after it wrote the new version's blobs). Steps 1 and 2 touch rows only.

The database is the truth: a crash at any point leaves unreferenced blobs at worst, never a
retained version without its blobs, and the next pass removes them. The round driver runs a
pass at start-up and after every commit, never while it writes a new version's blobs (they
are unreferenced until the commit, and a pass then would delete them); nothing else writes
blobs, and the admin commands never run a pass.

:func:`set_pin` is ``version pin`` / ``version unpin`` and the pin an export takes.
Errors are the store's ``StoreError`` and the blob store's ``BlobError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from coordinator.blobs import BlobStore
from coordinator.domain import AuditEvent, ModelVersion
from coordinator.store import Store

__all__ = ["RetentionReport", "apply_retention", "set_pin"]


@dataclass(frozen=True)
class RetentionReport:
    """What one pass did and left: versions by number, blobs by count and bytes."""

    released: tuple[int, ...]  # versions whose blobs this pass released
    deleted_blobs: int  # blob files deleted: released ones and orphans
    forgotten_rounds: int  # ended rounds this pass deleted from the history
    retained_versions: int  # versions whose blobs are kept
    missing_blobs: int  # blobs a retained version names that are not stored (restored badly?)
    blob_count: int  # blobs stored after the pass
    blob_bytes: int


def apply_retention(
    store: Store, blobs: BlobStore, *, keep_versions: int, keep_rounds: int, now: datetime
) -> RetentionReport:
    """One pass of the policy (see the module docstring). Blocks on the database and disk."""
    released = store.retire_versions(keep=keep_versions, now=now)
    forgotten = store.forget_rounds(keep=keep_rounds)
    referenced = store.retained_blobs()  # read after the release committed
    stored = blobs.names()
    deleted = 0
    for sha in stored:
        if sha not in referenced:
            blobs.delete(sha, missing_ok=True)
            deleted += 1
    count, size = blobs.usage()
    return RetentionReport(
        released=tuple(v.version for v in released),
        deleted_blobs=deleted,
        forgotten_rounds=len(forgotten),
        retained_versions=sum(1 for v in store.list_versions() if v.retained),
        missing_blobs=len(referenced - set(stored)),
        blob_count=count,
        blob_bytes=size,
    )


def set_pin(store: Store, version: int, *, pinned: bool, why: str) -> ModelVersion:
    """Pin or unpin ``version`` and write it to the audit log (``why`` says who asked).

    Raises ``NOT_FOUND`` for an unknown version and, pinning, for one whose blobs the
    policy already deleted (the message says it was not retained).
    """
    changed = store.pin_version(version, pinned=pinned)
    store.audit(
        AuditEvent(
            at=datetime.now(UTC),
            actor="admin",
            action="version_pinned" if pinned else "version_unpinned",
            detail=f"version {version}: {why}",
        )
    )
    return changed

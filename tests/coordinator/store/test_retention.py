"""Retention (docs/architecture.md, section 5), on every backend: which versions keep their
blobs, pins, a pass over a real blob store with a crash between its two steps, the shares
an ended round deletes, and the bound on the round history."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from coordinator.blobs import BlobStore
from coordinator.domain import ModelVersion, RoundPhase
from coordinator.errors import ErrorCode
from coordinator.retention import apply_retention, set_pin
from coordinator.store.sql import SqlStore

from .factories import (
    advance_to,
    at,
    chunk,
    keys,
    raises_code,
    shares,
    signature,
    start_round,
    unmask,
    version,
)


def _commit(store: SqlStore, number: int, made: ModelVersion | None = None) -> ModelVersion:
    """Round ``r{number}`` commits version ``number + 1`` (``made``, or a made-up one)."""
    round_id = f"r{number}"
    start_round(store, round_id, clients=2, number=number)
    advance_to(store, round_id, RoundPhase.UNMASKING)
    new = made or version(number + 1, round_id=round_id)
    store.commit_round(round_id, version=new, now=at(500 + number))
    return new


def _versions(store: SqlStore, count: int) -> None:
    """Version 0 and ``count`` committed ones."""
    store.add_initial_version(version(0))
    for number in range(count):
        _commit(store, number)


def _retained(store: SqlStore) -> list[int]:
    return [v.version for v in store.list_versions() if v.retained]


def test_the_newest_and_the_pinned_versions_keep_their_blobs(store: SqlStore) -> None:
    _versions(store, 5)
    assert store.pin_version(1, pinned=True).pinned
    released = store.retire_versions(keep=2, now=at(900))
    assert [v.version for v in released] == [0, 2, 3]
    assert all(v.blobs_deleted_at == at(900) and not v.retained for v in released)
    assert _retained(store) == [1, 4, 5]
    assert [v.version for v in store.list_versions()] == [0, 1, 2, 3, 4, 5]  # history stays
    assert store.get_version(2).blobs_deleted_at == at(900)
    assert store.retained_blobs() == frozenset().union(*(version(n).blob_hashes for n in (1, 4, 5)))
    assert store.retire_versions(keep=2, now=at(901)) == []  # nothing more to release
    assert store.get_version(2).blobs_deleted_at == at(900)  # released once, when it was
    # A larger keep later does not bring deleted blobs back.
    assert store.retire_versions(keep=10, now=at(902)) == []
    assert _retained(store) == [1, 4, 5]


def test_keep_must_leave_the_latest_version(store: SqlStore) -> None:
    _versions(store, 1)
    error = raises_code(
        ErrorCode.INVALID_ARGUMENT, lambda: store.retire_versions(keep=0, now=at(9))
    )
    assert "at least 1" in str(error)
    assert store.retire_versions(keep=1, now=at(9)) == [store.get_version(0)]
    assert _retained(store) == [1]


def test_a_released_version_cannot_be_pinned_and_unpinning_releases(store: SqlStore) -> None:
    _versions(store, 3)
    raises_code(ErrorCode.NOT_FOUND, lambda: store.pin_version(7, pinned=True))
    store.pin_version(2, pinned=True)
    store.retire_versions(keep=1, now=at(900))
    assert _retained(store) == [2, 3]
    error = raises_code(ErrorCode.NOT_FOUND, lambda: store.pin_version(1, pinned=True))
    assert "model version 1 was not retained" in str(error)
    assert "version pin" in str(error)
    assert not store.get_version(1).pinned
    assert not store.pin_version(1, pinned=False).pinned  # unpinning a released one: harmless
    store.pin_version(2, pinned=False)
    assert [v.version for v in store.retire_versions(keep=1, now=at(901))] == [2]
    assert _retained(store) == [3]


def test_set_pin_writes_the_audit_log(store: SqlStore) -> None:
    _versions(store, 1)
    set_pin(store, 0, pinned=True, why="exported to /tmp/x.pt")
    set_pin(store, 0, pinned=False, why="version unpin")
    events = store.list_audit(limit=2)
    assert [(e.actor, e.action, e.detail) for e in events] == [
        ("admin", "version_unpinned", "version 0: version unpin"),
        ("admin", "version_pinned", "version 0: exported to /tmp/x.pt"),
    ]


def _real(blobs: BlobStore, number: int, *, round_id: str | None = None) -> ModelVersion:
    """A version whose three blobs are in ``blobs``; every v̄ is empty, so all share it."""
    x = np.full(8, number, dtype="<f4")
    return dataclasses.replace(
        version(number, round_id=round_id),
        model_sha256=blobs.put_array(x),
        global_update_sha256=blobs.put_array(-x),
        second_moment_sha256=blobs.put_array(np.zeros(0, dtype="<f8")),
    )


def test_a_pass_deletes_what_no_retained_version_names(store: SqlStore, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    made = [_real(blobs, 0)]
    store.add_initial_version(made[0])
    for number in range(4):
        made.append(_commit(store, number, _real(blobs, number + 1, round_id=f"r{number}")))
    orphan = blobs.put(b"a commit that a crash cut short")
    blobs.put(b"half a write")
    (tmp_path / "blobs" / orphan[:2] / ".tmp-abc").write_bytes(b"a write in progress")
    store.pin_version(1, pinned=True)

    report = apply_retention(store, blobs, keep_versions=2, keep_rounds=100, now=at(900))

    kept = made[1].blob_hashes | made[3].blob_hashes | made[4].blob_hashes
    assert set(blobs.names()) == kept  # the shared empty v̄ stays: v1, v3 and v4 name it
    assert report.released == (0, 2)
    assert report.deleted_blobs == 2 * 2 + 2  # x and ΔG of versions 0 and 2, two orphans
    assert report.retained_versions == 3
    assert report.missing_blobs == 0
    assert report.blob_count == len(kept) == 7
    assert report.blob_bytes == 6 * 8 * 4  # six float32 vectors of 8 and one empty blob
    again = apply_retention(store, blobs, keep_versions=2, keep_rounds=100, now=at(901))
    assert (again.released, again.deleted_blobs, again.blob_count) == ((), 0, 7)
    assert report.forgotten_rounds == again.forgotten_rounds == 0


def test_a_crash_between_release_and_delete_leaves_only_orphans(
    store: SqlStore, tmp_path: Path
) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    made = [_real(blobs, 0)]
    store.add_initial_version(made[0])
    for number in range(3):
        made.append(_commit(store, number, _real(blobs, number + 1, round_id=f"r{number}")))
    # The pass's first step commits; the process dies before it deletes any file.
    assert [v.version for v in store.retire_versions(keep=1, now=at(900))] == [0, 1, 2]
    on_disk = set(blobs.names())
    assert store.retained_blobs() <= on_disk  # no retained version names a missing blob
    assert on_disk - store.retained_blobs()  # only orphans are left over

    # The next start runs the pass again: the orphans go, nothing is released twice.
    report = apply_retention(store, blobs, keep_versions=1, keep_rounds=100, now=at(950))
    assert report.released == ()
    assert set(blobs.names()) == made[3].blob_hashes == store.retained_blobs()
    assert store.get_version(1).blobs_deleted_at == at(900)


def test_an_ended_round_keeps_what_status_reads_and_loses_its_protocol_records(
    store: SqlStore,
) -> None:
    for round_id, number, ends in (("r0", 0, "commit"), ("r1", 1, "abort")):
        start_round(store, round_id, clients=3, number=number)
        for sender in (1, 2, 3):
            store.add_advertised_keys(keys(round_id, sender))
        advance_to(store, round_id, RoundPhase.SHARE_KEYS)
        for sender in (1, 2, 3):
            store.add_shares(round_id, sender, shares(round_id, sender, [1, 2, 3]))
        advance_to(store, round_id, RoundPhase.MASKED_INPUT)
        for sender in (1, 2, 3):
            store.add_input_chunk(chunk(round_id, sender, 0))
        advance_to(store, round_id, RoundPhase.CONSISTENCY_CHECK)
        for sender in (1, 2, 3):
            store.add_consistency_signature(signature(round_id, sender))
        advance_to(store, round_id, RoundPhase.UNMASKING)
        for holder in (1, 2, 3):
            store.add_unmask_response(unmask(round_id, holder, survivors=[1, 2, 3]))
        assert len(store.list_shares(round_id)) == 9
        assert len(store.list_input_chunks(round_id)) == 3
        assert len(store.list_consistency_signatures(round_id)) == 3
        assert len(store.list_advertised_keys(round_id)) == 3
        if ends == "commit":
            store.commit_round(round_id, version=version(1, round_id=round_id), now=at(600))
        else:
            store.abort_round(round_id, reason="closed", now=at(700))
        # every protocol record goes: keys, shares, receipts, signatures, responses
        assert store.list_shares(round_id) == []
        assert store.list_unmask_responses(round_id) == []
        assert store.list_advertised_keys(round_id) == []
        assert store.list_input_chunks(round_id) == []
        assert store.list_consistency_signatures(round_id) == []
        assert len(store.list_participants(round_id)) == 3  # what status reads
        assert store.list_phase_timings(round_id)[-1].phase is RoundPhase.UNMASKING


def test_the_round_history_keeps_the_newest_rounds_and_the_retained_versions(
    store: SqlStore,
) -> None:
    _versions(store, 4)  # rounds r0-r3 commit versions 1-4
    start_round(store, "r4", clients=2, number=4)
    store.abort_round("r4", reason="too few inputs", now=at(800))
    store.pin_version(2, pinned=True)
    store.retire_versions(keep=1, now=at(900))  # keeps 4 and the pinned 2
    start_round(store, "r5", clients=2, number=5)  # open, and the newest
    for bad in (0, -1):
        error = raises_code(ErrorCode.INVALID_ARGUMENT, lambda b=bad: store.forget_rounds(keep=b))
        assert "at least 1" in str(error)

    assert store.forget_rounds(keep=3) == ["r0", "r1", "r2"]

    assert [r.round_id for r in store.list_rounds()] == ["r5", "r4", "r3"]
    for gone in ("r0", "r1", "r2"):
        assert store.list_participants(gone) == []
        assert store.list_phase_timings(gone) == []
    assert len(store.list_participants("r3")) == 2
    # the released versions r0 and r2 made (1 and 3) went; the pinned 2 (r1's) stayed
    versions = {v.version: v for v in store.list_versions()}
    assert sorted(versions) == [0, 2, 4]
    assert versions[2].pinned
    assert versions[2].round_id is None  # kept, without its round
    assert versions[4].round_id == "r3"
    raises_code(ErrorCode.NOT_FOUND, lambda: store.get_version(3))
    assert store.next_round_number() == 6  # numbers never repeat
    assert store.forget_rounds(keep=3) == []
    # the open round is never deleted, however small keep is
    assert store.forget_rounds(keep=1) == ["r3", "r4"]
    assert [r.round_id for r in store.list_rounds()] == ["r5"]
    assert store.get_version(4).round_id is None  # retained: stays

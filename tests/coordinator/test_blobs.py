"""The blob store and the masked-input spool, on real files in a temporary directory."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from coordinator.blobs import BlobStore, InputSpool
from coordinator.errors import CoordinatorError, ErrorCode


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def spool(tmp_path: Path) -> InputSpool:
    return InputSpool(tmp_path / "spool")


# --- BlobStore ------------------------------------------------------------------------


def test_put_read_round_trip_and_layout(store: BlobStore) -> None:
    data = b"model weights" * 1000
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.exists(sha)
    assert store.size(sha) == len(data)
    assert store.read(sha) == data
    path = store.root / sha[:2] / sha
    assert path.read_bytes() == data
    assert _files(store.root) == [path]
    assert _mode(store.root) == 0o700
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o600


def test_put_empty_blob(store: BlobStore) -> None:
    sha = store.put(b"")
    assert sha == hashlib.sha256(b"").hexdigest()
    assert store.read(sha) == b""
    assert list(store.iter_chunks(sha, chunk_size=4)) == [(0, 1, b"")]


def test_put_is_idempotent(store: BlobStore) -> None:
    sha = store.put(b"same bytes")
    before = (store.root / sha[:2] / sha).stat()
    assert store.put(b"same bytes") == sha
    after = (store.root / sha[:2] / sha).stat()
    assert before.st_ino == after.st_ino  # not rewritten
    assert len(_files(store.root)) == 1


def test_put_replaces_a_truncated_file(store: BlobStore) -> None:
    sha = store.put(b"0123456789")
    (store.root / sha[:2] / sha).write_bytes(b"01234")
    assert store.put(b"0123456789") == sha
    store.verify(sha)


def test_no_temp_files_left_behind(store: BlobStore) -> None:
    shas = {store.put(bytes([i]) * (i + 1)) for i in range(40)}
    names = {p.name for p in _files(store.root)}
    assert names == shas
    assert store.sweep_temporary() == 0


def test_interrupted_write_is_not_visible_and_is_swept(store: BlobStore) -> None:
    data = b"complete blob contents"
    sha = hashlib.sha256(data).hexdigest()
    # What a crash between write and rename leaves behind: a partial temp file.
    (store.root / sha[:2]).mkdir(mode=0o700)
    temp = store.root / sha[:2] / ".tmp-crashed"
    temp.write_bytes(data[:5])
    assert not store.exists(sha)
    with pytest.raises(CoordinatorError) as info:
        store.read(sha)
    assert info.value.code is ErrorCode.NOT_FOUND
    assert store.sweep_temporary() == 1
    assert not temp.exists()
    assert store.put(data) == sha
    assert store.read(sha) == data


def test_array_round_trip_is_little_endian(store: BlobStore) -> None:
    array = np.arange(-5, 7, dtype=np.float32) / 3
    sha = store.put_array(array)
    assert store.read(sha) == array.astype("<f4").tobytes()
    back = store.read_array(sha, np.float32)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == np.float32
    back[0] = 42  # a fresh writable array
    assert store.read_array(sha, np.float32)[0] != 42


def test_big_endian_array_is_stored_little_endian(store: BlobStore) -> None:
    big = np.array([1, 2, 300000], dtype=">i8")
    sha = store.put_array(big)
    assert store.read(sha) == np.array([1, 2, 300000], dtype="<i8").tobytes()
    np.testing.assert_array_equal(store.read_array(sha, np.int64), [1, 2, 300000])


def test_strided_array_is_stored_contiguously(store: BlobStore) -> None:
    array = np.arange(20, dtype=np.uint64)[::3]
    sha = store.put_array(array)
    np.testing.assert_array_equal(store.read_array(sha, np.uint64), array)


def test_put_array_refuses_2d_and_objects(store: BlobStore) -> None:
    for bad in (np.zeros((2, 3)), np.array([object()], dtype=object)):
        with pytest.raises(CoordinatorError) as info:
            store.put_array(bad)
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_read_array_refuses_a_size_that_is_not_whole_items(store: BlobStore) -> None:
    sha = store.put(b"\x00" * 7)
    with pytest.raises(CoordinatorError) as info:
        store.read_array(sha, np.float32)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_iter_chunks_sizes_and_resume(store: BlobStore) -> None:
    data = os.urandom(10_000)
    sha = store.put(data)
    chunks = list(store.iter_chunks(sha, chunk_size=4096))
    assert [(i, n, len(d)) for i, n, d in chunks] == [(0, 3, 4096), (1, 3, 4096), (2, 3, 1808)]
    assert b"".join(d for _, _, d in chunks) == data
    resumed = list(store.iter_chunks(sha, chunk_size=4096, start_chunk=1))
    assert resumed == chunks[1:]
    last = list(store.iter_chunks(sha, chunk_size=4096, start_chunk=2))
    assert last == [(2, 3, data[8192:])]


def test_iter_chunks_exact_multiple(store: BlobStore) -> None:
    data = bytes(range(256)) * 4
    sha = store.put(data)
    chunks = list(store.iter_chunks(sha, chunk_size=256))
    assert [(i, n) for i, n, _ in chunks] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert all(d == bytes(range(256)) for _, _, d in chunks)
    default = list(store.iter_chunks(sha))
    assert default == [(0, 1, data)]


@pytest.mark.parametrize(("chunk_size", "start_chunk"), [(0, 0), (-1, 0), (10, -1), (10, 3)])
def test_iter_chunks_refuses_bad_ranges_eagerly(
    store: BlobStore, chunk_size: int, start_chunk: int
) -> None:
    sha = store.put(b"x" * 25)  # 3 chunks of 10
    with pytest.raises(CoordinatorError) as info:
        store.iter_chunks(sha, chunk_size=chunk_size, start_chunk=start_chunk)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../../etc/passwd",
        "ab/../../../../etc/passwd",
        "A" * 64,
        "0" * 63,
        "0" * 65,
        "g" * 64,
        "/" + "0" * 63,
        "0" * 62 + "/.",
        "0" * 63 + "\n",
    ],
)
def test_bad_names_are_refused(store: BlobStore, name: str) -> None:
    calls = [
        lambda: store.exists(name),
        lambda: store.size(name),
        lambda: store.read(name),
        lambda: store.read_array(name, np.float32),
        lambda: store.iter_chunks(name),
        lambda: store.verify(name),
        lambda: store.delete(name),
    ]
    for call in calls:
        with pytest.raises(CoordinatorError) as info:
            call()
        assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_unknown_blob_is_not_found(store: BlobStore) -> None:
    sha = "f" * 64
    assert not store.exists(sha)
    calls = [
        lambda: store.size(sha),
        lambda: store.read(sha),
        lambda: store.read_array(sha, np.float32),
        lambda: store.iter_chunks(sha),
        lambda: store.verify(sha),
        lambda: store.delete(sha),
    ]
    for call in calls:
        with pytest.raises(CoordinatorError) as info:
            call()
        assert info.value.code is ErrorCode.NOT_FOUND
    store.delete(sha, missing_ok=True)


def test_verify_detects_a_flipped_byte(store: BlobStore) -> None:
    data = os.urandom(3000)
    sha = store.put(data)
    store.verify(sha)
    path = store.root / sha[:2] / sha
    corrupt = bytearray(data)
    corrupt[1234] ^= 0x01
    path.write_bytes(bytes(corrupt))
    with pytest.raises(CoordinatorError) as info:
        store.verify(sha)
    assert info.value.code is ErrorCode.INTERNAL
    assert sha in str(info.value)


def test_delete(store: BlobStore) -> None:
    keep = store.put(b"keep")
    gone = store.put(b"gone")
    store.delete(gone)
    assert not store.exists(gone)
    assert store.read(keep) == b"keep"


def test_reopening_sees_existing_blobs(tmp_path: Path) -> None:
    sha = BlobStore(tmp_path / "b").put(b"persisted")
    assert BlobStore(tmp_path / "b").read(sha) == b"persisted"


# --- InputSpool -----------------------------------------------------------------------


def test_spool_out_of_order_chunks_assemble(spool: InputSpool) -> None:
    data = os.urandom(1000)
    chunks = [(offset, data[offset : offset + 300]) for offset in range(0, 1000, 300)]
    for offset, chunk in reversed(chunks):
        spool.write_chunk("round-1", 3, offset_bytes=offset, data=chunk)
    assert spool.size("round-1", 3) == 1000
    assert spool.read_range("round-1", 3, offset_bytes=0, length=1000) == data
    assert spool.read_range("round-1", 3, offset_bytes=450, length=100) == data[450:550]
    assert list(spool.iter_chunks("round-1", 3, chunk_bytes=400)) == [
        (0, data[:400]),
        (400, data[400:800]),
        (800, data[800:]),
    ]
    path = spool.root / "round-1" / "3.input"
    assert path.read_bytes() == data
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(spool.root) == 0o700


def test_spool_rewrite_of_the_same_chunk(spool: InputSpool) -> None:
    spool.write_chunk("r", 1, offset_bytes=0, data=b"aaaa")
    spool.write_chunk("r", 1, offset_bytes=4, data=b"bbbb")
    spool.write_chunk("r", 1, offset_bytes=4, data=b"bbbb")
    assert spool.read_range("r", 1, offset_bytes=0, length=8) == b"aaaabbbb"
    spool.write_chunk("r", 1, offset_bytes=0, data=b"cccc")
    assert spool.read_range("r", 1, offset_bytes=0, length=8) == b"ccccbbbb"
    assert spool.size("r", 1) == 8


def test_spool_participants_are_separate(spool: InputSpool) -> None:
    spool.write_chunk("r", 1, offset_bytes=0, data=b"one")
    spool.write_chunk("r", 2, offset_bytes=0, data=b"two")
    spool.write_chunk("other", 1, offset_bytes=0, data=b"elsewhere")
    assert spool.read_range("r", 1, offset_bytes=0, length=3) == b"one"
    assert spool.read_range("r", 2, offset_bytes=0, length=3) == b"two"
    assert spool.read_range("other", 1, offset_bytes=0, length=9) == b"elsewhere"
    assert spool.secagg_ids("r") == [1, 2]
    assert spool.secagg_ids("absent") == []


def test_spool_read_past_the_end_or_missing_is_not_found(spool: InputSpool) -> None:
    spool.write_chunk("r", 1, offset_bytes=0, data=b"12345")
    for call in (
        lambda: spool.read_range("r", 1, offset_bytes=3, length=5),
        lambda: spool.read_range("r", 2, offset_bytes=0, length=1),
        lambda: spool.iter_chunks("r", 2, chunk_bytes=10),
        lambda: spool.size("nope", 1),
    ):
        with pytest.raises(CoordinatorError) as info:
            call()
        assert info.value.code is ErrorCode.NOT_FOUND
    assert spool.read_range("r", 1, offset_bytes=5, length=0) == b""


def test_spool_remove_round_and_rounds(spool: InputSpool) -> None:
    assert spool.rounds() == []
    spool.write_chunk("b-round", 1, offset_bytes=0, data=b"x")
    spool.write_chunk("a_round", 2, offset_bytes=10, data=b"y")
    assert spool.rounds() == ["a_round", "b-round"]
    spool.remove_round("b-round")
    assert spool.rounds() == ["a_round"]
    assert not (spool.root / "b-round").exists()
    spool.remove_round("b-round")  # nothing left: a no-op
    assert spool.read_range("a_round", 2, offset_bytes=10, length=1) == b"y"


def test_spool_survives_reopening(tmp_path: Path) -> None:
    InputSpool(tmp_path / "s").write_chunk("r", 7, offset_bytes=2, data=b"zz")
    reopened = InputSpool(tmp_path / "s")
    assert reopened.rounds() == ["r"]
    assert reopened.secagg_ids("r") == [7]
    assert reopened.read_range("r", 7, offset_bytes=0, length=4) == b"\x00\x00zz"


@pytest.mark.parametrize(
    "round_id", ["", "..", ".", "a/b", "../escape", "a" * 65, "r\x00", "rö", "a b"]
)
def test_spool_refuses_bad_round_ids(spool: InputSpool, round_id: str) -> None:
    for call in (
        lambda: spool.write_chunk(round_id, 1, offset_bytes=0, data=b"x"),
        lambda: spool.read_range(round_id, 1, offset_bytes=0, length=1),
        lambda: spool.remove_round(round_id),
        lambda: spool.secagg_ids(round_id),
    ):
        with pytest.raises(CoordinatorError) as info:
            call()
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert list(spool.root.parent.iterdir()) == [spool.root]
    assert list(spool.root.iterdir()) == []


@pytest.mark.parametrize("secagg_id", [0, -1, True])
def test_spool_refuses_bad_secagg_ids(spool: InputSpool, secagg_id: int) -> None:
    with pytest.raises(CoordinatorError) as info:
        spool.write_chunk("r", secagg_id, offset_bytes=0, data=b"x")
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert spool.rounds() == []


def test_spool_refuses_bad_offsets_and_sizes(spool: InputSpool) -> None:
    for call in (
        lambda: spool.write_chunk("r", 1, offset_bytes=-1, data=b"x"),
        lambda: spool.read_range("r", 1, offset_bytes=-1, length=1),
        lambda: spool.read_range("r", 1, offset_bytes=0, length=-1),
        lambda: spool.iter_chunks("r", 1, chunk_bytes=0),
    ):
        with pytest.raises(CoordinatorError) as info:
            call()
        assert info.value.code is ErrorCode.INVALID_ARGUMENT

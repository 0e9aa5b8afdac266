"""The agent's download cache keeps only the last assigned round's blobs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge_client.transfers import prune_cache, round_blobs
from wire.v1 import edge_pb2 as pb


def _sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def test_prune_keeps_the_rounds_blobs_and_their_partial_downloads(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    config = pb.RoundConfig(
        model=pb.BlobRef(sha256=_sha("x2"), size=4),
        global_update=pb.BlobRef(sha256=_sha("g2"), size=4),
        second_moment=pb.BlobRef(sha256=_sha("v"), size=0),
    )
    keep = round_blobs(config)
    assert keep == {_sha("x2"), _sha("g2"), _sha("v")}
    names = [
        _sha("x2"),
        f"{_sha('g2')}.part",  # a download this round's retry resumes
        _sha("v"),  # the same v̄ as an earlier round: kept
        _sha("x1"),
        _sha("g1"),
        f"{_sha('x0')}.part",
    ]
    for name in names:
        (cache / name).write_bytes(b"....")
    removed = prune_cache(cache, keep=keep)
    assert removed == sorted([_sha("x1"), _sha("g1"), f"{_sha('x0')}.part"])
    assert sorted(p.name for p in cache.iterdir()) == sorted(names[:3])
    assert prune_cache(cache, keep=keep) == []
    assert prune_cache(tmp_path / "never-made", keep=keep) == []

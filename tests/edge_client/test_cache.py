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


def test_a_download_whose_status_was_lost_after_its_last_chunk_ends_from_its_part_file(
    tmp_path: Path,
) -> None:
    """Caught by the network tests: a reset after the blob's last chunk but before the
    stream's status left the whole blob in ``SHA.part``, and the retry asked for the chunk
    past the end (INVALID_ARGUMENT), so the agent left the round. Now a part file that holds
    every byte is finished without a call; one that lacks bytes still calls. The channel
    leads nowhere: any call fails UNAVAILABLE, and the retrier, past its deadline, gives up."""
    import asyncio

    import grpc
    import numpy as np
    import pytest

    from edge_client.retry import ROUND, Retrier
    from edge_client.transfers import download_blob
    from tests.e2e.harness import free_port
    from wire.v1 import edge_pb2_grpc as pb_grpc

    values = np.arange(300, dtype="<f4")
    data = values.tobytes()
    ref = pb.BlobRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    cache = tmp_path / "cache"
    cache.mkdir()

    async def download(part: bytes) -> np.ndarray:
        (cache / f"{ref.sha256}.part").write_bytes(part)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
            return await download_blob(
                pb_grpc.EdgeServiceStub(channel),
                ref,
                "<f4",
                cache_dir=cache,
                request=lambda start: pb.DownloadRequest(sha256=ref.sha256, start_chunk=start),
                metadata=(),
                retrier=Retrier(ROUND, what="download", deadline=0.0),
                progress=lambda what, done, total: None,
                on_bytes=lambda size: None,
            )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(download(data[:-4]))  # a byte short: it must ask
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    np.testing.assert_array_equal(asyncio.run(download(data)), values)  # whole: no call
    assert (cache / ref.sha256).read_bytes() == data
    assert not (cache / f"{ref.sha256}.part").exists()

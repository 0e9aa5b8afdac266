"""The agent's two transfers: a blob download that resumes, and a chunked upload that resumes.

- ``download_blob`` fetches a content-addressed blob in the coordinator's chunks
  (``wire.DOWNLOAD_CHUNK_BYTES``), appending each to ``CACHE/SHA.part``; after a failure it
  asks again from the first chunk it lacks, and not at all once it holds every byte (a
  stream whose status was lost after its last chunk). A blob already cached whole is read
  from the cache. The sha256 and the size are checked before the blob is used.
- ``prune_cache`` bounds the cache: after each round the agent keeps only the blobs (whole
  or partly downloaded) of the round it was last assigned, which are what the next round
  asks for again when that one aborted, and deletes the rest (docs/architecture.md,
  section 5).
- ``upload_vector`` sends a masked vector in chunks of ``chunk_elements`` ring elements. It
  asks the coordinator which chunks are durable (``GetUploadStatus``) and sends only the
  others, again after every failure, until the coordinator says the input is complete.
  A stream the coordinator ended early (it refused a chunk) is followed by a stream of one
  chunk, whose refusal, if it comes again, arrives with its code and message
  (``edge_client.retry.stream_ended_early``) and is retried or raised as that code says.

Both retry through the session's ``Retrier`` (``edge_client.retry``) and raise
``SessionError`` for what no retry can mend.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path

import grpc
import numpy as np

from edge_client.outcome import SessionError
from edge_client.retry import Retrier, stream_ended_early
from wire import DOWNLOAD_CHUNK_BYTES
from wire.v1 import edge_pb2 as pb
from wire.v1 import edge_pb2_grpc as pb_grpc

__all__ = ["download_blob", "prune_cache", "round_blobs", "upload_vector"]

Progress = Callable[[str, int, int], None]

log = logging.getLogger(__name__)


async def download_blob(
    stub: pb_grpc.EdgeServiceStub,
    ref: pb.BlobRef,
    dtype: str,
    *,
    cache_dir: Path,
    request: Callable[[int], pb.DownloadRequest],
    metadata: Sequence[tuple[str, str]],
    retrier: Retrier,
    progress: Progress,
    on_bytes: Callable[[int], None],
) -> np.ndarray:
    """The blob ``ref`` as an array of ``dtype``; ``request(start_chunk)`` builds the call."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / ref.sha256
    if final.exists() and hashlib.sha256(final.read_bytes()).hexdigest() == ref.sha256:
        return np.frombuffer(final.read_bytes(), dtype=dtype).astype(dtype[1:])
    part = cache_dir / f"{ref.sha256}.part"
    chunks: list[bytes] = []
    if part.exists():
        data = part.read_bytes()
        size = DOWNLOAD_CHUNK_BYTES
        # whole chunks only, but all of it once it holds the blob's every byte (the last
        # chunk of a blob is short)
        whole = len(data) if len(data) == ref.size else len(data) - len(data) % size
        chunks = [data[i : i + size] for i in range(0, whole, size)]
        if whole != len(data):
            part.write_bytes(data[:whole])
    received = sum(len(c) for c in chunks)
    # Until every byte is here: a stream whose last chunk came but whose status was lost
    # (a reset) is not asked for again, from a chunk past the blob's end.
    while received < ref.size:
        try:
            async for chunk in stub.DownloadBlob(request(len(chunks)), metadata=metadata):
                if chunk.index != len(chunks):
                    raise SessionError.aborted("the download skipped a chunk")
                chunks.append(bytes(chunk.data))
                received += len(chunk.data)
                on_bytes(len(chunk.data))
                with part.open("ab") as handle:
                    handle.write(chunk.data)
                progress("download", received, int(ref.size))
            break
        except grpc.aio.AioRpcError as exc:
            if received >= ref.size:
                # every byte came; only the stream's status was lost (a reset at its end)
                log.info(
                    "blob %s: the download's status was lost after its last chunk (%s); "
                    "the sha256 check decides",
                    ref.sha256[:12],
                    exc.code().name,
                )
                break
            await retrier.pause(exc)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != ref.sha256 or len(data) != ref.size:
        part.unlink(missing_ok=True)
        raise SessionError.aborted(f"blob {ref.sha256[:12]} failed its sha256 check")
    part.replace(final)
    return np.frombuffer(data, dtype=dtype).astype(dtype[1:])


def round_blobs(config: pb.RoundConfig) -> frozenset[str]:
    """The sha256 of the blobs a round downloads: x, ΔG and v̄."""
    return frozenset(
        ref.sha256 for ref in (config.model, config.global_update, config.second_moment)
    )


def prune_cache(cache_dir: Path, *, keep: Collection[str]) -> list[str]:
    """Delete every file in ``cache_dir`` but the blobs named in ``keep`` and their partial
    downloads (``SHA.part``); returns the names deleted. A missing directory is empty."""
    wanted = set(keep) | {f"{sha}.part" for sha in keep}
    try:
        entries = list(cache_dir.iterdir())
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        if entry.name not in wanted and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


async def upload_vector(
    stub: pb_grpc.EdgeServiceStub,
    vector: np.ndarray,
    *,
    round_id: str,
    chunk_elements: int,
    total_chunks: int,
    status_request: Callable[[], pb.RoundRef],
    metadata: Sequence[tuple[str, str]],
    retrier: Retrier,
    progress: Progress,
    on_bytes: Callable[[int], None],
) -> None:
    """Upload ``vector`` until the coordinator has all of it (see the module docstring)."""
    little = vector.astype(vector.dtype.newbyteorder("<"), copy=False)
    data = memoryview(little.data).cast("B")  # chunks are cut from it without a whole copy
    chunk_bytes = chunk_elements * vector.dtype.itemsize
    total = total_chunks
    probe = False  # send one chunk only: the stream before ended early, its status lost
    durable = -1  # chunks the coordinator held at the last status
    while True:
        try:
            status = await stub.GetUploadStatus(status_request(), metadata=metadata)
            if status.complete:
                progress("upload", total, total)
                return
            done = set(status.received_chunks)
            if len(done) > durable >= 0:
                retrier.reset()  # the last stream made progress: the next failure waits least
            durable = len(done)
            missing = [i for i in range(total) if i not in done]
            if probe:
                missing = missing[:1]

            async def chunks(
                missing: list[int] = missing, done: set[int] = done
            ) -> AsyncIterator[pb.MaskedInputChunk]:
                for i in missing:
                    yield pb.MaskedInputChunk(
                        round_id=round_id,
                        phase=pb.PHASE_MASKED_INPUT,
                        chunk_index=i,
                        values=bytes(data[i * chunk_bytes : (i + 1) * chunk_bytes]),
                    )
                    done.add(i)
                    on_bytes(min(chunk_bytes, len(data) - i * chunk_bytes))
                    progress("upload", len(done), total)

            status = await stub.UploadMaskedInput(chunks(), metadata=metadata)
            if status.complete:
                return
            probe = False
        except grpc.aio.AioRpcError as exc:
            if not stream_ended_early(exc):
                await retrier.pause(exc)
            elif not probe:
                # The coordinator refused a chunk mid-stream and its status was lost: ask
                # again with a stream of one chunk, which ends before the answer can race
                # it, so that a refusal comes back with its own code and message.
                probe = True
            else:
                await retrier.pause(exc, as_code=grpc.StatusCode.UNAVAILABLE)

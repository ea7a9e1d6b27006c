"""One chunk of a copy: read from the source, hash, write to the sink; tried again in place.

Two stages overlap per chunk, linked by a one-slot queue so memory stays bounded
whatever the file size (about three 2 MiB batches per stream):

    source.read ──batches──▶ hash + sink.write_chunk (one thread hop per batch
                             for sinks that hash in their write thread, FileSink)

A transient failure of one chunk (a reset connection, a 5xx, a short read) is
tried again where it stands, a few times with backoff, so one bad connection
costs one chunk again, not an attempt of the whole file (and its backoff).  A
chunk written in order (a one-stream copy, or one hashed inline with md5/sha*)
cannot rewind: it fails the attempt at once, and the file resumes from its
manifest on the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from policies.chunking import Chunk
from transferd import errors
from workers.stream import checksums
from workers.stream.base import Sink, Source, SourceInfo
from workers.stream.limiter import TokenBucket
from workers.stream.manifest import ChunkRecord

__all__ = ["HASH_BATCH_BYTES", "ChunkHashers", "copy_chunk", "race"]

# Pieces are grouped into batches of about this size per thread hop: large
# enough that the hop costs nothing, small enough to keep memory low (4 MiB
# batches were no faster and cost ~30 MB more peak RSS with 4 streams).
HASH_BATCH_BYTES = 2 * 1024 * 1024
CHUNK_RETRY_MAX_WAIT_S = 5.0  # a longer Retry-After is left to the attempt's own backoff


class CopyState(Protocol):
    """What a chunk needs of the copy it belongs to (``engine._Copy``)."""

    source: Source
    sink: Sink
    limiter: TokenBucket | None
    bytes_fetched: int  # read from the source in this attempt, retries included
    bytes_done: int  # in chunks written or being written


class ChunkHashers:
    """The per-chunk crc32c, the combinable whole-file value, and in-order hashers."""

    def __init__(self, combined_alg: str, ordered: list[checksums.Hasher]) -> None:
        self.crc = checksums.Running32("crc32c")
        self.value = (
            checksums.Running32(combined_alg)
            if combined_alg and combined_alg != "crc32c"
            else None
        )
        self.ordered = ordered
        self.length = 0

    def update(self, batch: list[bytes]) -> None:
        """Runs in a worker thread: every hash here releases the GIL on large buffers."""
        for piece in batch:
            self.crc.update(piece)
            if self.value is not None:
                self.value.update(piece)
            for h in self.ordered:
                h.update(piece)
            self.length += len(piece)

    def record(self) -> ChunkRecord:
        value = self.crc.value if self.value is None else self.value.value
        return ChunkRecord(self.length, self.crc.value, value)


async def race(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _worth_again(exc: BaseException) -> bool:
    """A transient failure that a second fetch of the same chunk may not meet."""
    if not isinstance(exc, errors.RetryableError) or isinstance(exc, errors.SourceChanged):
        return False
    return (exc.retry_after_s or 0.0) <= CHUNK_RETRY_MAX_WAIT_S


def _wait(state: RetryCallState) -> float:
    """Exponential with jitter, or the server's Retry-After when that is longer."""
    backoff = wait_exponential_jitter(multiplier=0.25, max=2.0)(state)
    exc = state.outcome.exception() if state.outcome is not None else None
    asked = getattr(exc, "retry_after_s", None) or 0.0
    return max(backoff, float(asked))


async def copy_chunk(
    copy: CopyState,
    info: SourceInfo,
    chunk: Chunk,
    combined_alg: str,
    ordered: list[checksums.Hasher],
    sequential: bool,
    tries: int,
) -> ChunkRecord:
    """Copy one chunk; one that can be fetched again is, up to ``tries`` times in all."""
    if sequential or ordered or tries <= 1:
        return await _copy_once(copy, info, chunk, combined_alg, ordered, sequential)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_worth_again), wait=_wait,
        stop=stop_after_attempt(tries), reraise=True,
    ):  # fmt: skip
        with attempt:
            return await _copy_once(copy, info, chunk, combined_alg, ordered, sequential)
    raise AssertionError("unreachable: tenacity either returns or re-raises")


async def _copy_once(
    copy: CopyState,
    info: SourceInfo,
    chunk: Chunk,
    combined_alg: str,
    ordered: list[checksums.Hasher],
    sequential: bool,
) -> ChunkRecord:
    hashers = ChunkHashers(combined_alg, ordered)
    sink = copy.sink
    # Two stages per chunk: the network read fills a batch while the
    # previous one is hashed (in a thread) and written (in a thread).  One
    # batch may wait between them, so a stream holds at most about three
    # batches, whatever the file size.
    batches: asyncio.Queue[list[bytes] | None] = asyncio.Queue(maxsize=1)
    counted = 0  # this try's share of copy.bytes_done, taken back if it fails

    async def read() -> None:
        batch: list[bytes] = []
        batch_bytes = 0
        limiter = copy.limiter
        async for piece in copy.source.read(info, chunk.offset, chunk.length):
            if limiter is not None:
                await limiter.acquire(len(piece))
            copy.bytes_fetched += len(piece)
            batch.append(piece)
            batch_bytes += len(piece)
            if batch_bytes >= HASH_BATCH_BYTES:
                await batches.put(batch)
                batch, batch_bytes = [], 0
        if batch:
            await batches.put(batch)
        await batches.put(None)

    # A sink that can hash in its own write thread (FileSink) saves a thread
    # hop per batch: the hashers see its batches, in order, before they are
    # written.  Other sinks get the batches hashed here first.
    hook = hashers.update if getattr(sink, "hashes_while_writing", False) else None

    async def feed() -> AsyncIterator[bytes]:
        nonlocal counted
        while (batch := await batches.get()) is not None:
            if hook is None:
                await asyncio.to_thread(hashers.update, batch)
            for piece in batch:
                yield piece
            n = sum(len(p) for p in batch)
            copy.bytes_done += n
            counted += n
            del batch

    async def write() -> None:
        extra = {} if hook is None else {"before_write": hook}
        if sequential and not sink.random_access:
            await sink.write_stream(feed(), **extra)
        else:
            await sink.write_chunk(chunk.index, chunk.offset, feed(), **extra)

    try:
        await race([read(), write()])
        if chunk.length is not None and hashers.length != chunk.length:
            raise errors.RetryableError(
                f"chunk {chunk.index} got {hashers.length} of {chunk.length} bytes"
            )
    except BaseException:
        copy.bytes_done -= counted
        raise
    return hashers.record()

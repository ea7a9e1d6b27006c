"""Chunk planning for the streaming mover: how to cut one file into ranged reads.

Pure: a size and a policy in, a plan out.  The engine runs the plan; the
optimizer (later) tunes the policy per link.  Why chunks at all: each chunk is
a unit of parallelism (one ranged GET), of resume (recorded in the manifest
when done) and of integrity (its own crc32c).  Too small and per-request
overhead dominates; too large and an interruption loses much work.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ChunkPolicy:
    """How files are cut into chunks and how many are fetched at once.

    - ``chunk_size_bytes`` (64 MiB): the target chunk size; the last chunk is shorter.
    - ``max_streams`` (4): parallel ranged reads per file.  On a low-latency
      link one stream is CPU-bound and more do not help; on long fat links
      parallel ranges fill the pipe.
    - ``min_chunk_bytes`` (8 MiB): files smaller than this are one chunk, and
      a chunk is never planned smaller than this (except the tail).
    - ``max_chunks`` (10000): large files get larger chunks so the manifest stays small.
    - ``chunk_tries`` (4): how often one chunk is fetched within an attempt after
      transient failures (1: a chunk's failure ends the attempt at once).
    """

    chunk_size_bytes: int = 64 * MiB
    max_streams: int = 4
    min_chunk_bytes: int = 8 * MiB
    max_chunks: int = 10_000
    chunk_tries: int = 4

    def __post_init__(self) -> None:
        if self.chunk_size_bytes < 1:
            raise ValueError(f"chunk_size_bytes must be ≥ 1, got {self.chunk_size_bytes}")
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be ≥ 1, got {self.max_streams}")
        if self.min_chunk_bytes < 1:
            raise ValueError(f"min_chunk_bytes must be ≥ 1, got {self.min_chunk_bytes}")
        if self.max_chunks < 1:
            raise ValueError(f"max_chunks must be ≥ 1, got {self.max_chunks}")
        if self.chunk_tries < 1:
            raise ValueError(f"chunk_tries must be ≥ 1, got {self.chunk_tries}")


@dataclass(frozen=True)
class Chunk:
    """One byte range [offset, offset+length) of a file; ``length`` None means "to the end"."""

    index: int
    offset: int
    length: int | None


@dataclass(frozen=True)
class ChunkPlan:
    """The plan for one file, with a one-line rationale for logs and the dashboard."""

    chunk_size_bytes: int
    streams: int
    chunks: tuple[Chunk, ...]
    rationale: str


def plan(
    size: int | None,
    policy: ChunkPolicy,
    *,
    ranges: bool = True,
    chunk_size_bytes: int | None = None,
) -> ChunkPlan:
    """Cut a file of ``size`` bytes into chunks.

    ``ranges`` False (the source ignores Range) or an unknown size gives one
    sequential stream.  ``chunk_size_bytes`` forces a chunk size (used to resume
    with the chunk size an earlier attempt recorded).
    """
    if size is None or not ranges:
        why = "size unknown" if size is None else "source ignores ranges"
        return ChunkPlan(size or 0, 1, (Chunk(0, 0, size),), f"one sequential stream: {why}")
    if size < 0:
        raise ValueError(f"size must be ≥ 0, got {size}")
    if chunk_size_bytes is not None:
        if chunk_size_bytes < 1:
            raise ValueError(f"chunk_size_bytes must be ≥ 1, got {chunk_size_bytes}")
        chunk = chunk_size_bytes
        why = f"chunk size {chunk} fixed by an earlier attempt"
    elif size < policy.min_chunk_bytes or size <= policy.chunk_size_bytes:
        chunk = max(size, 1)
        why = "small file: one chunk"
    else:
        chunk = max(policy.chunk_size_bytes, policy.min_chunk_bytes)
        why = f"{chunk} byte chunks"
        if -(-size // chunk) > policy.max_chunks:
            chunk = -(-size // policy.max_chunks)
            why = f"{chunk} byte chunks (raised to stay ≤ {policy.max_chunks} chunks)"
    if size == 0:
        chunks: tuple[Chunk, ...] = (Chunk(0, 0, 0),)
    else:
        chunks = tuple(
            Chunk(i, off, min(chunk, size - off)) for i, off in enumerate(range(0, size, chunk))
        )
    streams = min(policy.max_streams, len(chunks))
    return ChunkPlan(chunk, streams, chunks, f"{why}, {len(chunks)} chunk(s), {streams} stream(s)")


@dataclass(frozen=True)
class ChunkSettings:
    """The ``[chunking]`` table: the base policy and the bounds :func:`tune` keeps to."""

    chunk_size_bytes: int = 64 * MiB
    min_chunk_bytes: int = 8 * MiB
    max_chunk_bytes: int = 512 * MiB
    max_streams: int = 4
    max_chunks: int = 10_000
    target_chunk_s: float = 4.0
    chunk_tries: int = 4


@dataclass(frozen=True)
class LinkStats:
    """What the worker knows of a link from Redis: throughput EMA, round-trip time, actives."""

    throughput_bps: float | None = None
    rtt_s: float | None = None
    active: int = 0


def tune(size: int | None, link: LinkStats, settings: ChunkSettings) -> tuple[ChunkPolicy, str]:
    """The chunk policy for one file from its size and its link's recent history.

    Unknown link: the base settings.  Known throughput: a stream's share of the
    link (throughput / active files) sets the chunk size so one chunk takes
    about ``target_chunk_s`` (bounded by min/max chunk).  A long round trip
    (bandwidth-delay product larger than what one stream keeps in flight,
    taken as 4 MiB) asks for more streams, a short one for fewer; a file never
    gets more streams than chunks.
    """
    base = ChunkPolicy(
        chunk_size_bytes=settings.chunk_size_bytes, max_streams=settings.max_streams,
        min_chunk_bytes=settings.min_chunk_bytes, max_chunks=settings.max_chunks,
        chunk_tries=settings.chunk_tries,
    )
    if link.throughput_bps is None or link.throughput_bps <= 0:
        return base, "link unknown: base chunking"
    per_stream_bps = link.throughput_bps / max(1, link.active)
    chunk = int(per_stream_bps * settings.target_chunk_s)
    chunk = max(settings.min_chunk_bytes, min(settings.max_chunk_bytes, chunk))
    streams = settings.max_streams
    why = f"{chunk} byte chunks for {per_stream_bps:.0f} B/s per stream"
    if link.rtt_s is not None:
        bdp_bytes = link.throughput_bps * link.rtt_s
        in_flight_per_stream = 4 * MiB
        streams = max(1, min(settings.max_streams * 2, -(-int(bdp_bytes) // in_flight_per_stream)))
        why += f", rtt {link.rtt_s * 1000:.0f} ms: {streams} stream(s)"
    if size is not None and size > 0:
        streams = max(1, min(streams, -(-size // chunk)))
    policy = ChunkPolicy(
        chunk_size_bytes=chunk, max_streams=streams,
        min_chunk_bytes=settings.min_chunk_bytes, max_chunks=settings.max_chunks,
        chunk_tries=settings.chunk_tries,
    )
    return policy, why

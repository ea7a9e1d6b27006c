"""The chunk planner, table by table."""

from __future__ import annotations

import pytest

from policies.chunking import ChunkPolicy, MiB, plan

P = ChunkPolicy()


@pytest.mark.parametrize(
    ("size", "policy", "ranges", "chunk_bytes", "streams", "n_chunks"),
    [
        (0, P, True, 1, 1, 1),
        (1, P, True, 1, 1, 1),
        (7 * MiB, P, True, 7 * MiB, 1, 1),
        (64 * MiB, P, True, 64 * MiB, 1, 1),
        (64 * MiB + 1, P, True, 64 * MiB, 2, 2),
        (1024 * MiB, P, True, 64 * MiB, 4, 16),
        (1024 * MiB, ChunkPolicy(max_streams=1), True, 64 * MiB, 1, 16),
        (100 * MiB, ChunkPolicy(chunk_size_bytes=1 * MiB), True, 8 * MiB, 4, 13),
        (100 * MiB, ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB), True, MiB, 4, 100),
        (10_000 * MiB, ChunkPolicy(chunk_size_bytes=8 * MiB, max_chunks=100), True, 100 * MiB, 4,
         100),
        (1024 * MiB, P, False, 1024 * MiB, 1, 1),
    ],
)
def test_plan(
    size: int, policy: ChunkPolicy, ranges: bool, chunk_bytes: int, streams: int, n_chunks: int
) -> None:
    p = plan(size, policy, ranges=ranges)
    assert (p.chunk_size_bytes, p.streams, len(p.chunks)) == (chunk_bytes, streams, n_chunks)
    # chunks tile the file exactly, in order
    assert [c.index for c in p.chunks] == list(range(n_chunks))
    assert p.chunks[0].offset == 0
    for a, b in zip(p.chunks, p.chunks[1:], strict=False):
        assert a.length is not None and b.offset == a.offset + a.length
    assert sum(c.length or 0 for c in p.chunks) == size
    assert p.rationale


def test_unknown_size_is_one_sequential_stream() -> None:
    p = plan(None, P)
    assert p.streams == 1
    assert [(c.index, c.offset, c.length) for c in p.chunks] == [(0, 0, None)]


def test_forced_chunk_size_for_resume() -> None:
    p = plan(100 * MiB, P, chunk_size_bytes=10 * MiB)
    assert p.chunk_size_bytes == 10 * MiB and len(p.chunks) == 10


@pytest.mark.parametrize(
    "kwargs",
    [{"chunk_size_bytes": 0}, {"max_streams": 0}, {"min_chunk_bytes": 0}, {"max_chunks": 0}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ChunkPolicy(**kwargs)
